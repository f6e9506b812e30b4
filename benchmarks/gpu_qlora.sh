#!/usr/bin/env bash
# QLoRA on CUDA: Ludwig's llm encoder with 4-bit quantization (LLM-as-classifier) and model_type llm with QLoRA,
# each trained, predicted, saved and loaded back, on the tests' tiny Llama. Needs a CUDA GPU and bitsandbytes;
# writes $OUT/qlora.json (OUT defaults to benchmarks/results).
: "${OUT:=benchmarks/results}"; export OUT
set -uo pipefail
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=$PWD
python - <<'PY' 2>&1 
import json, os, sys, tempfile, traceback
from pathlib import Path
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
import transformers, peft, bitsandbytes
print("transformers", transformers.__version__, "peft", peft.__version__, "bnb", bitsandbytes.__version__)
sys.path.insert(0, "tests")
import tiny
from tunefork import Model
tmp = Path(tempfile.mkdtemp())
llama = tiny.build_llama(tmp / "llama", pad_token=True)
frame = tiny.sentiment_frame(64, seed=0)
out = {}
def case(name, cfg, data, column):
    try:
        m = Model(cfg, progress=False, quiet=True)
        r = m.train(data, output_directory=tmp / name)
        p1 = m.predict(data.head(8))
        m2 = Model.load(r.output_directory / "model")
        p2 = m2.predict(data.head(8))
        out[name] = {"ok": True, "same_after_load": bool(p1[column].equals(p2[column])),
                     "loaded_in_4bit": bool(getattr(m.model, "is_loaded_in_4bit", False) or any("4bit" in type(x).__name__ for x in m.model.modules())),
                     "val_loss": r.statistics["validation"]["combined"]["loss"], "files": sorted(p.name for p in (r.output_directory / "model").rglob("*") if p.is_file())[:12]}
    except Exception as e:
        out[name] = {"ok": False, "error": "".join(traceback.format_exception(e)).strip()[-2500:]}
    print(name, out[name].get("error") or json.dumps(out[name])[:900])
case("llm_encoder_qlora", {"input_features": [{"name": "review", "type": "text", "encoder": {"type": "llm", "base_model": str(llama), "quantization": {"bits": 4}, "adapter": {"type": "lora"}}}],
     "output_features": [{"name": "sentiment", "type": "category"}], "trainer": {"epochs": 2, "batch_size": 8, "learning_rate": 0.001}}, frame, "sentiment_predictions")
llm = frame.rename(columns={"review": "instruction", "sentiment": "output"})
case("llm_qlora", {"model_type": "llm", "base_model": str(llama), "input_features": [{"name": "instruction", "type": "text"}], "output_features": [{"name": "output", "type": "text"}],
     "quantization": {"bits": 4}, "adapter": {"type": "lora"}, "generation": {"max_new_tokens": 4}, "preprocessing": {"global_max_sequence_length": 64},
     "trainer": {"type": "finetune", "epochs": 2, "batch_size": 8, "learning_rate": 0.001}}, llm, "output_response")
os.makedirs(os.environ["OUT"], exist_ok=True)
json.dump(out, open(os.path.join(os.environ["OUT"], "gpu_qlora.json"), "w"), indent=1)
PY
