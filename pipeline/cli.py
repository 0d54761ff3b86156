"""`pipeline`: one subcommand per stage, and `run` for all of them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.config import ConfigError, ExperimentConfig, load_config, save_config
from pipeline.train.interrupt import TrainingInterrupted

EXIT_INTERRUPTED = 75
"""EX_TEMPFAIL: a stage stopped by a signal after checkpointing; running the same command again resumes it."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except TrainingInterrupted as err:
        print(f"pipeline {args.command}: {err}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"pipeline {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pipeline {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description="Distributed audio classifier pipeline: "
                                     "Dask preprocessing, PyTorch DDP training, scaling reports.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="build datasets and manifests")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    demo = data_commands.add_parser("demo", help="collect the Fish Fillets voice recordings into a "
                                    "folder-per-speaker dataset (needs Debian's fillets-ng-data-cs/-nl)")
    demo.add_argument("out_dir", type=Path, help="dataset folder to write")
    demo.add_argument("--sample-rate", type=int, default=16000, help="output sample rate (default 16000)")
    demo.add_argument("--max-files-per-speaker", type=int, default=None, help="keep only the first N files")
    demo.add_argument("--workers", type=int, default=2, help="decoding processes (default 2)")
    demo.set_defaults(handler=_data_demo)
    manifest = data_commands.add_parser("manifest", help="write RUN_DIR/manifest.csv with the split by source file")
    _add_config_arguments(manifest)
    manifest.set_defaults(handler=_stage("data_stage"))

    for name, text in [("preprocess", "chunk, compute MFCC/log-mel features and images with Dask"),
                       ("train", "train every configuration of the sweep with torchrun (DDP)"),
                       ("run", "all stages of one experiment: data, preprocess, train, report")]:
        sub = commands.add_parser(name, help=text, description=text)
        _add_config_arguments(sub)
        if name in ("train", "run"):
            sub.add_argument("--force", action="store_true", help="retrain configurations that have metrics")
        sub.set_defaults(handler=_stage(f"{name}_stage" if name != "run" else "run_all"))

    report = commands.add_parser("report", help="write report.md, scaling.csv and speedup.png of a run folder")
    report.add_argument("run_dir", type=Path, help="run folder (run_dir of the experiment)")
    report.set_defaults(handler=lambda args: _stages().report_stage(args.run_dir))
    return parser


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="experiment YAML, e.g. configs/demo.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set train.batch_size=64 (repeatable)")


def _stages():
    from pipeline import stages

    return stages


def _stage(function: str):
    def handler(args: argparse.Namespace) -> None:
        config: ExperimentConfig = load_config(args.config, args.overrides)
        stages = _stages()
        if function != "run_all":
            save_config(config, stages.resolved_config_path(config))
        kwargs = {"force": args.force} if hasattr(args, "force") else {}
        getattr(stages, function)(config, **kwargs)

    return handler


def _data_demo(args: argparse.Namespace) -> None:
    from pipeline.data.demo import build_demo

    out = build_demo(args.out_dir, args.sample_rate, args.max_files_per_speaker, args.workers)
    print(f"data demo: dataset in {out} (sources and skipped files in {out / 'SOURCES.csv'})")


if __name__ == "__main__":
    sys.exit(main())
