"""The sections of an experiment config: one small dataclass per stage, with the defaults and what each key means.

Only the data: loading and checking live in `pipeline.config` (`load_config`), `pipeline.config_schema` (YAML to
these classes) and `pipeline.config_checks` (values that type-check but cannot work). Every stage reads its own
section; `pipeline.config` re-exports all of them, so `from pipeline.config import TrainConfig` is the way to name
one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class SplitConfig:
    val: float = 0.15
    """Fraction of source files (not chunks) in the validation split."""
    test: float = 0.15
    """Fraction of source files in the test split."""
    seed: int = 0
    """Seed of the per-label shuffle that assigns files to splits."""
    by: Literal["file", "speaker"] = "file"
    """`file` splits source files; `speaker` keeps every speaker in one split, so test voices are unseen."""


@dataclass
class DataConfig:
    source: Literal["demo", "spoof", "folder", "csv", "asvspoof"] = "folder"
    """`demo` builds the Fish Fillets speaker dataset into `root` if it is missing, `spoof` the natural vs
    synthesized speech dataset; `folder` reads `root` as one sub-folder per class; `csv` reads `manifest`;
    `asvspoof` reads the ASVspoof 2019-style `protocol` and the audio in `root`."""
    root: str = "data/demo"
    """Dataset folder: one sub-folder per class (`folder`, `demo`), where `spoof` builds its files, or the folder
    of `<FILE>.flac` (or `.wav`) files a protocol names (`asvspoof`)."""
    manifest: str | None = None
    """With `csv`: a CSV with columns path, label and optionally speaker and split (relative paths are
    relative to the CSV's folder)."""
    protocol: str | None = None
    """With `asvspoof`: the protocol file, one `SPEAKER FILE - SYSTEM KEY` line per utterance (KEY bonafide or
    spoof is the label, SPEAKER the speaker for `split.by: speaker`), as the challenge ships it."""
    sample_rate: int = 16000
    """Every file is resampled to this rate, so a model cannot learn the recording rate instead of the class."""
    split: SplitConfig = field(default_factory=SplitConfig)
    """How source files are split into train / val / test."""


@dataclass
class DaskSlurmConfig:
    """The SLURM jobs of `preprocess.cluster: slurm` (dask-jobqueue's SLURMCluster): each job runs Dask workers
    that connect back to the scheduler in the `pipeline preprocess` process. Every value lands in an sbatch script,
    so the strings are checked like those of `slurm:`."""

    jobs: int = 2
    """SLURM jobs to keep running; each one is resubmitted when its workers retire before the walltime."""
    cores: int = 4
    """CPU cores per job (`--cpus-per-task`), shared by its worker processes, one thread per core."""
    processes: int = 4
    """Dask worker processes per job; processes rather than threads because feature work holds the GIL."""
    gpus_per_job: int = 0
    """GPUs per job (`--gres=gpu:N`), one feature worker process each, pinned to its own GPU; the job's other
    `processes` (at least one, so `processes` > `gpus_per_job`) decode on the CPU. Without this, workers alike
    would all use the node's first GPU. 0, or `preprocess.device: cpu`: no GPUs asked for, every process a plain
    worker."""
    memory: str = "8GB"
    """Memory per job (e.g. `8GB`, `16GiB`), split evenly between its worker processes."""
    walltime: str = "01:00:00"
    """Time limit of each job ([D-]HH:MM:SS); workers retire a little before it, so it never kills a task."""
    partition: str | None = None
    """Partition of the worker jobs; none: the cluster's default."""
    account: str | None = None
    """Account charged for the worker jobs; none: the user's default."""
    extra_options: list[str] = field(default_factory=list)
    """More sbatch options for the worker jobs, e.g. `--qos=high`."""


@dataclass
class PreprocessConfig:
    chunk_seconds: float = 3.0
    """Length of each chunk; the seed method used 1, 3, 5 and 10 s."""
    hop_seconds: float | None = None
    """Step from one chunk's start to the next; shorter than `chunk_seconds` makes chunks overlap. None: no overlap."""
    last_chunk: Literal["drop", "pad"] = "drop"
    """What to do with a final chunk shorter than `chunk_seconds`: drop it or zero-pad it."""
    min_last_chunk: float = 0.5
    """With `pad`, the shortest remainder (as a fraction of a chunk) still worth padding."""
    silence_threshold_db: float | None = None
    """Drop chunks whose RMS level is below this many dB relative to full scale (e.g. -50); None keeps all."""
    export_chunks: bool = False
    """Also write every chunk as a 16-bit wav under chunks/<split>/<label>/ (as seed 001 did); by default chunks
    are rows pointing into their source file (`path`, `start_s`, `end_s`)."""
    n_mfcc: int = 13
    """MFCC coefficients per frame (13 as in seed 001)."""
    n_mels: int = 64
    """Mel bands of the log-mel spectrogram (and of the MFCC filterbank)."""
    n_fft: int = 400
    """FFT size in samples."""
    hop_length: int = 160
    """Hop between frames in samples."""
    f_min: float = 0.0
    """Lowest frequency of the mel filterbank in Hz."""
    f_max: float | None = None
    """Highest frequency of the mel filterbank in Hz; None: half the sample rate."""
    top_db: float = 80.0
    """Dynamic range kept by the dB conversion, below the loudest bin of each chunk (the dB floor)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where features are computed: `auto` uses a GPU when the worker sees one."""
    images: bool = True
    """Write a spectrogram image per chunk and image feature under images/<feature>/ (see `image_layout`)."""
    image_layout: Literal["shards", "files"] = "shards"
    """`shards`: each task writes one tar per image feature, `images/<feature>/shard-NNNNN.tar`, in WebDataset's
    layout (`<key>.png` + `<key>.json` per chunk): files grow with shards, not chunks, which is what cluster file
    systems need (1,000 h of audio in one file per chunk is over a million files), and a tar is read sequentially
    and opened by `tar` or `webdataset`. `files`: one file per chunk under images/<feature>/<split>/<label>/, the
    export for people who want to open images one by one."""
    image_features: list[Literal["logmel", "mfcc"]] = field(default_factory=lambda: ["logmel"])
    """Which features get images (seed 000 drew mel spectrograms, seed 001 MFCCs)."""
    image_size: int = 128
    """Height and width of each square image in pixels (seed 000: 288, ImageNet models: 224)."""
    image_format: Literal["png", "jpeg"] = "png"
    """PNG (lossless) or JPEG (quality 90, smaller; seed 001 saved JPEGs)."""
    colormap: str = "magma"
    """Matplotlib colormap name used as a lookup table."""
    workers: int = 2
    """Dask workers of the LocalCluster (one thread each); with `scheduler_file`, how many to wait for."""
    scheduler_file: str | None = None
    """Attach to a running Dask cluster through its scheduler file instead of starting a LocalCluster (this is how
    slurm/preprocess.sbatch spreads the work over the nodes of its allocation)."""
    files_per_task: int = 64
    """Source files per Dask task (one feature shard each); large enough that scheduling overhead stays small."""
    task_megabytes: float = 256.0
    """Most input (MB of audio files on disk) per task: a task takes files until one more would pass it, so that
    one long recording is a task of its own instead of the straggler of 63 others. A file larger than this alone is
    still one task; it is decoded in blocks, so its size sets the task's time, not the worker's memory."""
    worker_memory_mb: float | None = None
    """Memory a Dask worker may use, in MB; none: the worker's own `memory_limit`. A file whose decoding would not
    fit what is left of it (after the worker's resident memory, under Dask's pause threshold) is rejected with the
    figures, instead of being the task that makes the nanny kill the worker."""
    cluster: Literal["local", "slurm", "mpi"] = "local"
    """Where the Dask workers come from: `local`, a LocalCluster of `workers` processes here; `slurm`, SLURM jobs
    submitted by dask-jobqueue as `slurm_cluster` says; `mpi`, the ranks of an MPI launch (dask-mpi: rank 0 the
    scheduler, rank 1 this pipeline, the others workers; see slurm/preprocess-mpi.sbatch). `scheduler_file` wins."""
    slurm_cluster: DaskSlurmConfig = field(default_factory=DaskSlurmConfig)
    """The worker jobs of `cluster: slurm`."""
    interface: str | None = None
    """Network interface the scheduler and workers of `cluster: slurm` or `mpi` listen on (e.g. `ib0`, `lo` on one
    host); none: Dask's default, which may be one the compute nodes cannot reach."""


@dataclass
class TrainConfig:
    model: Literal["cnn", "resnet50", "densenet121", "lstm"] = "cnn"
    """`cnn`: seed 000's small CNN; `resnet50` (seed 001) and `densenet121` (seed 004): torchvision backbones with
    a 512-dropout-512-dropout head; `lstm`: a recurrent classifier over the frames of a feature."""
    input: Literal["features", "images"] = "features"
    """`features` reads the feature shards (the fast path); `images` reads the spectrogram PNGs (the seeds' path)."""
    feature: Literal["logmel", "mfcc"] = "logmel"
    """Which feature the model reads when `input` is `features`."""
    pretrained_weights: str | None = None
    """Local file with a torchvision state_dict for the `resnet50`/`densenet121` backbone; none trains from scratch
    (compute nodes usually have no network, so weights are never downloaded)."""
    freeze: Literal["none", "backbone", "first_k"] = "none"
    """Backbone layers to freeze: `none`; `backbone` (only the head trains); `first_k` (the first `trainable_blocks`
    blocks and the head train, the rest is frozen, as seed 001 did)."""
    trainable_blocks: int = 2
    """With `freeze: first_k`, how many of the backbone's blocks (counted from the input) stay trainable."""
    dropout: float = 0.25
    """Dropout rate of the classifier head."""
    epochs: int = 3
    """Passes over the training split."""
    batch_size: int = 32
    """Batch size per rank; the global batch is this times the world size times `grad_accumulation`."""
    lr: float = 1e-3
    """Adam learning rate for one rank (before `lr_scaling`)."""
    lr_scaling: Literal["none", "linear"] = "none"
    """`linear` multiplies `lr` by the world size times `grad_accumulation` (the linear scaling rule)."""
    warmup_epochs: float = 0.0
    """Epochs over which the learning rate ramps up linearly from near zero (use with `lr_scaling: linear`)."""
    grad_accumulation: int = 1
    """Micro-batches whose gradients are summed before one optimizer step (and one all-reduce)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """`bf16` runs forward and loss under bfloat16 autocast on GPU; CPU ranks always run fp32. The lstm's recurrent
    layers stay fp32 under autocast (cuDNN would run them in fp16); metrics.json's `precision` says what ran."""
    channels_last: bool = True
    """Use the channels-last memory format for convolutional models (faster convolutions on GPUs)."""
    loader_workers: int = 0
    """DataLoader worker processes per rank (persistent); 0 loads in the training process."""
    shuffle_window: int = 16384
    """Training chunks shuffled together: each epoch shuffles the shard order, groups whole shards until a group
    holds this many chunks, and shuffles within the group, so reads stay in a few shards at a time (the whole split
    when it is smaller). Larger mixes more; the page cache, not the ranks' memory, holds the group."""
    checkpoint_every_steps: int = 0
    """Also checkpoint every N optimizer steps (0: only at the end of each epoch)."""
    stop_check_every_steps: int | None = None
    """Check for a stop signal (SIGUSR1/SIGTERM: checkpoint and exit) every N optimizer steps, on the same steps on
    every rank, and after every epoch; a signal stops the run within N steps. Each check is an all-reduce the host
    waits for; none: every step on CPU ranks, every 10 on GPU ranks."""
    log_every_steps: int | None = None
    """Write the training loss to TensorBoard every N optimizer steps (reading it waits for the device); none:
    every step on CPU ranks, every 10 on GPU ranks."""
    synthetic_steps: int = 0
    """After training (and everything computed from its weights: test scores, model.pt), time this many optimizer
    steps on random inputs of the training input's shape made once on the device: the same model, optimizer,
    precision, accumulation and batch per rank, no loader. metrics.json's `synthetic_samples_per_second` against
    `samples_per_second` says whether the run was input-bound or compute-bound. It does not change the trained
    model, the checkpoint or any accuracy figure; 0 (the default) skips it."""
    early_stopping_patience: int = 0
    """Stop after this many epochs without improvement of `early_stopping_metric` (0: never stop early)."""
    early_stopping_metric: Literal["val_loss", "val_accuracy", "val_balanced_accuracy", "val_macro_f1"] = \
        "val_accuracy"
    """Validation metric watched by early stopping."""
    backend: Literal["ddp", "horovod"] = "ddp"
    """`ddp` (torch DistributedDataParallel) or `horovod` (Horovod's DistributedOptimizer, where it was built:
    `./setup.sh --with-horovod`). The same model, data, sampler, LR scaling, accumulation, precision, checkpoints
    and metrics either way; ranks start with torchrun (ddp) or horovodrun (horovod) here, with srun under SLURM."""
    backends: list[Literal["ddp", "horovod"]] = field(default_factory=list)
    """Backends to sweep, each crossed with every configuration, so one experiment measures both and the report
    puts their curves side by side (Horovod runs are named `ws2-cpu-bs32-horovod`); empty: just `backend`."""
    world_sizes: list[int] = field(default_factory=lambda: [1, 2])
    """Each entry is one configuration: the number of DDP ranks."""
    batch_sizes: list[int] = field(default_factory=list)
    """Batch sizes per rank to sweep, each crossed with every world size; empty: just `batch_size`."""
    scaling: Literal["weak", "strong", "both"] = "weak"
    """Which scaling study the sweep measures. `weak` keeps each batch size per rank at every world size, so the
    global batch grows with the ranks (data-parallel training's usual mode). `strong` keeps the global batch of the
    fewest-rank configuration (batch size x its ranks) and divides it among the ranks: with world sizes 1, 2, 4 and
    batch 32, the runs are ws1-bs32, ws2-bs16, ws4-bs8. `both` runs the union (the fewest-rank runs are shared), and
    the report shows each study in its own section, labelled."""
    repeats: int = 1
    """Times each configuration is trained; repeat k uses seed `seed + k - 1`, so the spread covers both the
    machine's noise and the model's initialisation. The report gives the mean and a 95% confidence interval over
    the repeats. Above 1, each repeat has its own folder `<configuration>-r<k>`."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`auto` uses one GPU per rank when there are enough, else CPU ranks with gloo."""
    threads_per_rank: int = 1
    """CPU threads per rank, so that a CPU rank stands for one fixed unit of compute like a GPU."""
    skip_oversubscribed: bool = True
    """Skip CPU configurations needing more cores than the machine has (they are named in the report)."""
    max_restarts: int = 0
    """Restarts of a configuration whose rank died; each restart resumes from the last checkpoint."""
    requeue: bool = True
    """Inside a SLURM job, on SIGUSR1 (`slurm.signal`) save a checkpoint and `scontrol requeue` the job."""
    collective_timeout_s: int = 300
    """Seconds a rank waits in one collective (all-reduce, broadcast, barrier) before it fails, naming the
    collective: the bound on a hang when another rank died (NCCL's own default is 30 minutes). Gloo and NCCL both
    honour it. Raise it only if one step (or rank 0's checkpoint write, which the others wait for) takes longer."""
    seed: int = 0
    """Seed of model init and data order."""


@dataclass
class SlurmConfig:
    """How `pipeline submit` asks SLURM for resources. Every value lands in a generated sbatch script, so the
    strings are checked (`check_slurm`) and quoted; none can add a line or a command to the script."""

    partition: str | None = None
    """Partition of every job (`--partition`); none: the cluster's default."""
    account: str | None = None
    """Account charged (`--account`); none: the user's default."""
    gpus_per_node: int = 0
    """GPUs per node. A configuration of N ranks takes ceil(N / gpus_per_node) nodes with `--gres=gpu:K` (K ranks
    per node, one task per GPU); 0: CPU ranks without GPUs."""
    cpu_ranks_per_node: int = 4
    """With `gpus_per_node: 0`, how many CPU ranks share a node."""
    preprocess_nodes: int = 1
    """Nodes of the preprocessing job; each runs one Dask worker process per CPU it gets."""
    preprocess_cpus_per_node: int = 4
    """CPUs (and Dask workers) per node of the preprocessing job."""
    preprocess_gpus_per_node: int = 0
    """GPUs per node of the preprocessing job (`--gres=gpu:G`, or `--gpus-per-node=G` with that `gpu_request`):
    with `preprocess.device` auto or cuda, G of its Dask workers per node compute features, one pinned to each GPU,
    and the others decode (`cluster: local` through the batch script's per-node launcher, and `mpi`); fewer than
    `preprocess_cpus_per_node`. `cluster: slurm` asks for GPUs in its worker jobs instead
    (`preprocess.slurm_cluster.gpus_per_job`)."""
    memory: str | None = None
    """Memory per node (`--mem`, e.g. `32G`); none: the partition's default."""
    time_preprocess: str = "02:00:00"
    """Time limit of the preprocessing job ([D-]HH:MM:SS)."""
    time_train: str = "04:00:00"
    """Time limit of each training job; 90 s before it, SIGUSR1 makes training checkpoint and requeue."""
    time_report: str = "00:20:00"
    """Time limit of the report job."""
    signal_seconds: int = 90
    """How long before the time limit SLURM sends `signal` to the training ranks (`--signal=USR1@N`)."""
    signal: Literal["USR1", "USR2"] = "USR1"
    """The warning signal (`--signal=<signal>@N`) on which the ranks checkpoint and the job requeues. NCCL can
    swallow SIGUSR1 on some sites (NVIDIA/nccl#704), and submitit uses USR2 for the same reason: choose USR2 there.
    Ranks stop cleanly on USR1, USR2 and TERM alike; only this one requeues."""
    requeue_by: Literal["rank", "script"] = "rank"
    """Who requeues a training job after its checkpoint: `rank` (rank 0 runs `scontrol requeue`), or `script`, for
    ranks in a container without `scontrol`: the ranks only checkpoint, `pipeline train` exits 75, and the batch
    script, on the host, runs `scontrol requeue` (template train-requeue.sbatch)."""
    gpu_request: Literal["gres", "gpus-per-node", "gpus-per-task"] = "gres"
    """How a training job asks for its K GPUs per node: `--gres=gpu:K`, `--gpus-per-node=K`, or `--gpus-per-task=1`
    (each rank then sees only its own GPU, as device 0; sites that bind GPUs to tasks need this form)."""
    cpus_per_gpu_rank: int = 0
    """`--cpus-per-task` of a GPU rank: its own process and its `train.loader_workers`; 0: `train.threads_per_rank
    + train.loader_workers`. CPU ranks always get `threads_per_rank + loader_workers`."""
    exclusive: bool = False
    """`--exclusive` on training jobs: no other job shares their nodes (cleaner scaling measurements)."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run before the pipeline in every job, e.g. `module load cuda/12.4`, `source ~/venvs/x/bin/activate`
    or `export NCCL_SOCKET_IFNAME=ib0`. They are inserted verbatim, one line each, after the #SBATCH header and the
    settings and before `set -euo pipefail`: they are the user's own shell code, not quoted, so write them as you
    would in the script (a failing line stops nothing unless it says `|| exit 1`). A newline, carriage return or
    NUL is refused; a line starting with `#SBATCH` too (sbatch would not read it there)."""
    python: str | None = None
    """Python with the pipeline installed, as the compute nodes see it; none: the one running `pipeline submit`
    (right when the virtual environment is on a shared file system)."""
    extra_options: list[str] = field(default_factory=list)
    """More sbatch options for every job, e.g. `--qos=high` or `--constraint=a100`."""


@dataclass
class PlanConfig:
    """The target of the report's allocation estimate (`report.plan`): the training a user asks hours for, priced at
    the measured (or projected) samples/s. Each key left unset takes the measured run's own value, which the report
    says, so a pasted figure never hides whether it is the run's or a chosen target."""

    epochs: int | None = None
    """Epochs of the target training; none: the run's `train.epochs`, as its metrics.json records it."""
    train_samples: int | None = None
    """Training samples (chunks) per epoch of the target training, e.g. the full dataset's training split when the
    measured run used a subset; none: the run's `train_samples`."""
    gpus_per_node: int | None = None
    """GPUs (CPU ranks on CPU) per node of the target machine, for node-hours; none: a measured scale's own `nodes`,
    and for a projected scale the most ranks per node measured on that device (max of ranks / nodes)."""


@dataclass
class ReportConfig:
    """What `pipeline report` adds to the measured figures."""

    interconnect_gbit_s: float = 100.0
    """Link bandwidth per GPU of the projection model (Gbit/s; 100 is one InfiniBand EDR port, 200 HDR)."""
    projection_world_sizes: list[int] = field(default_factory=lambda: [8, 16, 32])
    """World sizes the projection model extrapolates to, drawn dashed beside the measured points."""
    min_efficiency: float = 0.75
    """Parallel efficiency under which a configuration is flagged; the report names the largest measured scale of
    each curve that stays at or above it (NCI's "reasonable minimum" is about 75%)."""
    plan: PlanConfig = field(default_factory=PlanConfig)
    """The target training of the allocation estimate (epochs, samples, GPUs per node)."""


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    """Short name of the experiment, shown in reports."""
    run_dir: str = "results/experiment"
    """Folder that holds every output of this experiment."""
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    """Resources of the jobs `pipeline submit` sends to SLURM."""
    report: ReportConfig = field(default_factory=ReportConfig)
