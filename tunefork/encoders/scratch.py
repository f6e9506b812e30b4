"""The encoders trained from scratch, by their config `type`: text's `embed`, `parallel_cnn`, `stacked_cnn`, `rnn`,
`cnnrnn`, and a set input's `embed`. `pretrained` is false when the weights come from a saved model instead."""

from __future__ import annotations

from torch import nn


def build(feature, meta: dict, pretrained: bool, where: str) -> nn.Module:
    from tunefork.encoders import bag, cnnrnn, embed, parallel_cnn, rnn, stacked_cnn

    if feature.type == "set":
        return bag.SetBag(feature.encoder, meta, pretrained, where)
    kinds = {"embed": embed.Embed, "parallel_cnn": parallel_cnn.ParallelCNN, "stacked_cnn": stacked_cnn.StackedCNN,
             "rnn": rnn.RNN, "cnnrnn": cnnrnn.CNNRNN}
    return kinds[feature.encoder.type](feature.encoder, meta, pretrained, where)
