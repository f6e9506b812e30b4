"""Of the complete configs on Ludwig's LLM, fine-tuning and PEFT pages, the share that validates and the share that
trains one step, with the reason for each failure.

    python benchmarks/ludwig_llm_configs.py            # validate and run one step: about a minute on 2 CPU cores
    python benchmarks/ludwig_llm_configs.py --no-run   # validate only

Each YAML file in benchmarks/ludwig_llm_configs/, and the LLM ones of tests/ludwig_configs/ (SHARED), is a config
as a Ludwig page writes it (its first line names the
page: the LLM configuration page, LLM fine-tuning for classification, text classification with an LLM encoder,
"Advanced PEFT Adapters", "Multi-Adapter PEFT"; where a page's snippet has no features, the LLM page's are added and
the comment says so). The measuring is benchmarks/ludwig_configs.py's, on this folder: validate as written, then,
for the run only, tiny local models for the hub ids, one optimizer step, a local backend. Results, with each
failure's one line, go to benchmarks/results/ludwig_llm_configs.json; re-run it as other keys land.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from benchmarks.common import quiet_transformers  # noqa: E402
from benchmarks.ludwig_configs import measure, report  # noqa: E402

FOLDER = ROOT / "benchmarks" / "ludwig_llm_configs"
# The LLM, fine-tuning and PEFT configs of tests/ludwig_configs/ (Ludwig's documentation pages and examples/)
SHARED = ("llama2_7b_llm_docs.yaml", "llama2_7b_4bit.yaml", "alpaca_qlora_getting_started.yaml",
          "llm_zero_shot_classification.yaml", "llm_few_shot_retrieval.yaml", "phi2_json_schema.yaml",
          "llm_classification_full_finetune.yaml", "llm_classification_cached_embeddings.yaml",
          "llm_classification_lora.yaml", "llama32_pissa_lora.yaml", "imdb_deepspeed_zero3.yaml")


def configs() -> list[Path]:
    shared = [ROOT / "tests" / "ludwig_configs" / name for name in SHARED]
    return sorted(FOLDER.glob("*.yaml")) + [path for path in shared if path.is_file()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-run", action="store_true", help="validate only")
    args = parser.parse_args()
    run, bert, llama = not args.no_run, None, None
    with tempfile.TemporaryDirectory() as folder:
        if run:
            import tiny

            quiet_transformers()
            bert = tiny.build_bert(Path(folder) / "bert")
            llama = tiny.build_llama(Path(folder) / "llama", pad_token=True)
        entries = [measure(path, run, bert, llama) for path in configs()]
    report(entries, run, "ludwig_llm_configs")


if __name__ == "__main__":
    main()
