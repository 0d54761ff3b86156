"""`pipeline`: one subcommand per stage, and `run` for all of them; a thin shell over `pipeline.api.Experiment`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.api import Experiment, report
from pipeline.config import ConfigError, ExperimentConfig
from pipeline.io import DiskFullError
from pipeline.layout import TrainingPaths
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
    # RuntimeError covers a held run lock (RunLockHeld) and a refused model or checkpoint file (UnsafeFileError)
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError, DiskFullError) as err:
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
    for add in (_add_data, _add_stages, _add_submit, _add_jobs, _add_config, _add_inference, _add_report,
                _add_bench):
        add(commands)
    return parser


def _add_data(commands) -> None:
    data = commands.add_parser("data", help="build datasets and manifests")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    demo = data_commands.add_parser("demo", help="collect the Fish Fillets voice recordings into a "
                                    "folder-per-speaker dataset (needs Debian's fillets-ng-data-cs/-nl)")
    demo.add_argument("out_dir", type=Path, help="dataset folder to write")
    demo.add_argument("--sample-rate", type=int, default=16000, help="output sample rate (default 16000)")
    demo.add_argument("--max-files-per-speaker", type=int, default=None, help="keep only the first N files")
    demo.add_argument("--workers", type=int, default=2, help="decoding processes (default 2)")
    demo.set_defaults(handler=_data_demo)
    spoof = data_commands.add_parser("spoof", help="build the natural vs synthetic speech dataset: Fish Fillets "
                                     "recordings against espeak-ng, flite and festival voices (Debian packages)")
    spoof.add_argument("out_dir", type=Path, help="dataset folder to write (nothing is done if it is complete)")
    spoof.add_argument("--sample-rate", type=int, default=16000, help="output sample rate (default 16000)")
    spoof.add_argument("--files-per-speaker", type=int, default=250,
                       help="recordings per natural speaker (4 speakers; default 250)")
    spoof.add_argument("--sentences-per-voice", type=int, default=48,
                       help="dialogue lines per synthetic voice (21 voices; default 48)")
    spoof.add_argument("--seed", type=int, default=0, help="seed of the choice of recordings and lines")
    spoof.add_argument("--workers", type=int, default=2, help="synthesis processes (default 2)")
    spoof.set_defaults(handler=_data_spoof)
    manifest = data_commands.add_parser("manifest", help="write RUN_DIR/manifest.csv with the split by "
                                        "source file or speaker")
    _add_config_arguments(manifest)
    manifest.set_defaults(handler=_stage("data"))


def _add_stages(commands) -> None:
    for name, text in [("preprocess", "chunk, compute MFCC/log-mel features and images with Dask"),
                       ("train", "train every configuration of the sweep with torchrun (DDP)"),
                       ("run", "all stages of one experiment: data, preprocess, train, report")]:
        sub = commands.add_parser(name, help=text, description=text)
        _add_config_arguments(sub)
        if name in ("train", "run"):
            sub.add_argument("--force", action="store_true", help="retrain configurations that have metrics")
        if name == "train":
            sub.add_argument("--configuration", help="train just this one, e.g. ws2-cuda-bs32 (default: all)")
            sub.add_argument("--launcher", choices=["torchrun", "srun"], default="torchrun",
                             help="torchrun on this machine (default), or srun inside a SLURM allocation: one "
                             "task per rank across its nodes")
        sub.set_defaults(handler=_stage(name))


def _add_submit(commands) -> None:
    submit = commands.add_parser("submit", help="submit the experiment to SLURM as dependent jobs: preprocess, "
                                 "one training job per configuration, report (runs them here without SLURM)")
    _add_config_arguments(submit)
    submit.add_argument("--dry-run", action="store_true", help="write and print every script, submit nothing")
    submit.add_argument("--local", action="store_true", help="run the scripts here even where sbatch exists")
    submit.set_defaults(handler=_submit)


def _add_jobs(commands) -> None:
    status = commands.add_parser("status", help="state of each submitted job and where its log is")
    status.add_argument("run_dir", type=Path, help="run folder of a submitted experiment")
    status.set_defaults(handler=_status)
    cancel = commands.add_parser("cancel", help="scancel every unfinished job of a submitted experiment")
    cancel.add_argument("run_dir", type=Path, help="run folder of a submitted experiment")
    cancel.set_defaults(handler=_cancel)


def _add_config(commands) -> None:
    show = commands.add_parser("config", help="print the validated config (overrides applied), or one key")
    _add_config_arguments(show)
    show.add_argument("--get", metavar="KEY", help="print just this dotted key, e.g. run_dir")
    show.set_defaults(handler=_show_config)


def _add_inference(commands) -> None:
    evaluate = commands.add_parser("evaluate", help="score trained configurations on the test split")
    _add_config_arguments(evaluate)
    evaluate.add_argument("--configuration", help="one configuration, e.g. ws2-cpu-bs32 (default: all trained)")
    evaluate.set_defaults(handler=_evaluate)
    predict = commands.add_parser("predict", help="classify audio files: chunk, score each chunk, average per file")
    _add_config_arguments(predict)
    predict.add_argument("files", type=Path, nargs="+", help="audio files (wav, flac, ogg, mp3)")
    predict.add_argument("--configuration", help="trained configuration to use (default: the first by name)")
    predict.add_argument("--out", type=Path, help="also write the predictions to this CSV")
    predict.set_defaults(handler=_predict)


def _add_report(commands) -> None:
    text = ("write the scaling report of a run folder (report.md, report.html, scaling.csv/json, figures), with "
            "two run folders their comparison (compare.md, compare.html, compare.csv, compare.png/svg), or with "
            "--combine one report of two or more run folders measured separately (e.g. 1 node, then 2 nodes)")
    report = commands.add_parser("report", help=text, description=text)
    report.add_argument("run_dir", type=Path, metavar="RUN_A", help="run folder (run_dir of the experiment)")
    report.add_argument("other_run", type=Path, nargs="?", metavar="RUN_B",
                        help="a second run folder to compare RUN_A with (B/A ratios: above 1 means RUN_B is faster)")
    report.add_argument("more_runs", type=Path, nargs="*", metavar="RUN_C",
                        help="with --combine: further run folders to combine with RUN_A and RUN_B")
    report.add_argument("--combine", action="store_true",
                        help="one scaling report of all the run folders given (two or more), each configuration "
                        "from the first folder that has it; refused when their model, data or settings differ")
    report.add_argument("--out", type=Path, metavar="DIR", help="folder of the comparison or combined report (only "
                        "with RUN_B; default: RUN_B/compare-<name of RUN_A>, with --combine <last run>/combined)")
    report.set_defaults(handler=_report)


def _message_size(text: str) -> int:
    from pipeline.allreduce import parse_size

    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


BENCH_OPTIONS: list[tuple[str, dict]] = [
    ("--out", {"type": Path, "metavar": "FILE", "help": "JSON to write (default results/bench-<host>.json; with "
               "--allreduce results/allreduce-<host>.json)"}),
    ("--quick", {"action": "store_true", "help": "small sizes and few steps: seconds on a CPU"}),
    ("--steps", {"type": int, "help": "steps (feature calls) per timed repeat"}),
    ("--batch-size", {"type": int, "help": "training and loader batch size (CUDA 256, CPU 16)"}),
    ("--image-size", {"type": int, "help": "training input size in pixels (CUDA 224, CPU 64)"}),
    ("--features", {"type": Path, "metavar": "RUN_DIR",
                    "help": "time the loader over this preprocessed run folder's train split, not synthetic data"}),
    ("--device", {"choices": ["auto", "cpu", "cuda"], "default": "auto", "help": "default: cuda if seen"}),
    ("--allreduce", {"action": "store_true", "help": "instead: all-reduce latency and bus bandwidth per world size "
                     "and message size (gloo on CPU, NCCL on CUDA), the method of nccl-tests; spawns the ranks here, "
                     "or is one rank of a torchrun/srun job: srun -N 2 --ntasks-per-node 4 pipeline bench "
                     "--allreduce --out RUN_DIR/allreduce.json"}),
    ("--world-sizes", {"type": int, "nargs": "+", "metavar": "N", "help": "(--allreduce) ranks to measure at when "
                       "spawning them here (default 2 4, and on CUDA powers of two up to the GPUs); sizes above "
                       "the cores (CPU) or GPUs are skipped, with the reason in the JSON"}),
    ("--message-sizes", {"type": _message_size, "nargs": "+", "metavar": "BYTES", "help": "(--allreduce) message "
                         "sizes, e.g. 4K 1M 64M (default 4K 16K ... 64M, powers of 4)"}),
    ("--repeats", {"type": int, "help": "(--allreduce) timed repeats per message size (default 5, --quick 3)"}),
]
ALLREDUCE_ONLY = ("world_sizes", "message_sizes", "repeats")
BENCH_ONLY = ("steps", "batch_size", "image_size", "features")


def _add_bench(commands) -> None:
    text = ("measure this machine: training images/s of resnet50 and the cnn (fp32, bf16 on CUDA), log-mel + MFCC "
            "chunks/s and the training loader's samples/s, as a table and JSON; with --allreduce the all-reduce "
            "latency and bus bandwidth the report's projection uses")
    bench = commands.add_parser("bench", help=text, description=text)
    for flag, options in BENCH_OPTIONS:
        bench.add_argument(flag, **options)
    bench.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> None:
    unused = BENCH_ONLY if args.allreduce else ALLREDUCE_ONLY
    given = [f"--{name.replace('_', '-')}" for name in unused if getattr(args, name) is not None]
    if given:
        raise ValueError(f"{', '.join(given)} {'do' if len(given) > 1 else 'does'} not apply "
                         f"{'with' if args.allreduce else 'without'} --allreduce")
    if args.allreduce:
        from pipeline.allreduce import main_args
    else:
        from pipeline.bench import main_args

    main_args(args)


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="experiment YAML, e.g. configs/demo.yaml, or a run folder (its "
                        "config.yaml, with run_dir where the folder is now)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set train.batch_size=64 (repeatable)")


def _experiment(args: argparse.Namespace) -> Experiment:
    return Experiment.load(args.config, args.overrides)


def _stage(method: str):
    """The handler of a stage command: the Experiment's method of that name, with the command's options."""
    def handler(args: argparse.Namespace) -> None:
        kwargs = {key: getattr(args, key) for key in ("force", "configuration", "launcher") if hasattr(args, key)}
        getattr(_experiment(args), method)(**kwargs)

    return handler


def _report(args: argparse.Namespace) -> None:
    others = [run for run in (args.other_run, *args.more_runs) if run is not None]
    if args.combine:
        if not others:
            raise ValueError("--combine needs two or more run folders (RUN_A RUN_B ...); for one run folder's "
                             "report leave out --combine")
        report(args.run_dir, others, args.out, combine=True)
        return
    if args.more_runs:
        raise ValueError(f"{len(others) + 1} run folders: a comparison takes two; add --combine for one report of "
                         "all of them")
    if args.out is not None and args.other_run is None:
        raise ValueError("--out needs a second run folder: a single run's report is written into the run folder")
    report(args.run_dir, args.other_run, args.out)


def _submit(args: argparse.Namespace) -> None:
    records = _experiment(args).submit(dry_run=args.dry_run, local=args.local)
    failed = [r for r in records if r.state not in (None, "COMPLETED")]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(records)} local jobs did not complete: "
                           + ", ".join(f"{r.configuration or r.stage} ({r.state})" for r in failed))


def _status(args: argparse.Namespace) -> None:
    from pipeline.slurm.jobs import status_table

    rows = status_table(args.run_dir)
    columns = ["stage", "configuration", "job", "state", "detail", "log"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    for row in [dict(zip(columns, columns, strict=True)), *rows]:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in columns).rstrip())


def _cancel(args: argparse.Namespace) -> None:
    from pipeline.slurm.jobs import cancel

    cancelled = cancel(args.run_dir)
    print(f"cancel: {len(cancelled)} unfinished jobs cancelled" + (f": {' '.join(cancelled)}" if cancelled else ""))


def _show_config(args: argparse.Namespace) -> None:
    import yaml

    from pipeline.config import to_dict

    value = to_dict(_experiment(args).config)
    for part in args.get.split(".") if args.get else []:
        if not isinstance(value, dict) or part not in value:
            raise ConfigError(f"{args.config}: no key {args.get!r}")
        value = value[part]
    if isinstance(value, (dict, list)):
        print(yaml.safe_dump(value, sort_keys=False), end="")
    else:
        print(value)


def _trained_run(args: argparse.Namespace) -> ExperimentConfig:
    """The config the run was trained with (RUN_DIR/config.yaml), found through the experiment's run_dir."""
    return _experiment(args).trained().config  # the folder may have moved


def _evaluate(args: argparse.Namespace) -> None:
    from pipeline.train import inference

    config = _trained_run(args)
    folders = [inference.choose(config, args.configuration)] if args.configuration else \
        inference.trained_configurations(config)
    if not folders:
        inference.choose(config, None)  # raises the "train first" error
    for folder in folders:
        result = inference.evaluate_configuration(config, folder)
        eer = f", EER {result['eer']:.3f}" if result["eer"] is not None else ""
        print(f"evaluate: {folder.name}: test accuracy {result['accuracy']:.3f}, balanced "
              f"{result['balanced_accuracy']:.3f}, macro F1 {result['macro_f1']:.3f}{eer} over {result['n']} chunks "
              f"-> {TrainingPaths(folder).evaluation_test}")


def _predict(args: argparse.Namespace) -> None:
    import csv

    from pipeline.io import atomic_write_csv
    from pipeline.train import inference

    config = _trained_run(args)
    folder = inference.choose(config, args.configuration)
    rows = inference.predict_files(config, folder, args.files)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    print(f"predict: model {folder}", file=sys.stderr)
    writer = csv.DictWriter(sys.stdout, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    if args.out:
        atomic_write_csv(args.out, rows, columns)
    failed = [r for r in rows if r["error"]]
    if failed:
        raise ValueError(f"{len(failed)} of {len(rows)} files could not be classified, e.g. {failed[0]['error']}")


def _data_demo(args: argparse.Namespace) -> None:
    from pipeline.data.demo import build_demo

    out = build_demo(args.out_dir, args.sample_rate, args.max_files_per_speaker, args.workers)
    print(f"data demo: dataset in {out} (sources and skipped files in {out / 'SOURCES.csv'})")


def _data_spoof(args: argparse.Namespace) -> None:
    from pipeline.data.spoof import build_spoof

    out = build_spoof(args.out_dir, args.sample_rate, args.files_per_speaker, args.sentences_per_voice,
                      args.workers, args.seed)
    print(f"data spoof: dataset in {out} (files, sources, texts and skipped lines in {out / 'SOURCES.csv'})")


if __name__ == "__main__":
    sys.exit(main())
