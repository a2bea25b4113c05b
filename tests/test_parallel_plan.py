"""Training beyond one GPU: the sequence-parallel degree, and launch files the engines themselves load."""

from __future__ import annotations

import json
import os
from pathlib import Path
from unittest import mock

import pytest
from conftest import FIXTURES

from ropekit.cli import main
from ropekit.training.memory import GIB, plan_memory
from ropekit.training.parallel import (
    ACCELERATE_FILE,
    DEEPSPEED_FILE,
    ULYSSES_ACCELERATE_FILE,
    per_gpu_bytes,
    plan_parallel,
)

QWEN7B = FIXTURES / "Qwen__Qwen2.5-7B"
CONTEXT = 524288  # 512k tokens


def qwen_plan(context: int = CONTEXT, gpus: int = 8):
    memory = plan_memory(json.loads((QWEN7B / "config.json").read_text()), context, mode="train")
    return memory, plan_parallel(memory.arch, memory.params, context, gpus=gpus, gpu="H100")


def test_qwen25_7b_at_512k_on_8_h100_needs_context_parallel_degree_8():
    memory, plan = qwen_plan()
    usable = 79.6 * GIB * 0.90  # H100 80GB as the driver reports it, 90% planned on
    assert not plan.fits_without_split
    cp = plan.context_parallel
    assert cp.fits and cp.degree == 8 and cp.chunked_loss  # 64k tokens per GPU; the loss must be chunked
    assert sum(cp.breakdown.values()) <= usable
    half = per_gpu_bytes(memory.arch, memory.params, CONTEXT, 1, 8, 4, chunked_loss=True)
    assert sum(half.values()) > usable  # degree 4 would not fit: 8 is the smallest
    # by hand: 16 bytes per parameter over 8 GPUs; 65536 tokens x 28 layers x 3584 x 2 bytes of checkpoints
    assert cp.breakdown["weights, gradients, AdamW (sharded over 8)"] == memory.params.total * 16 / 8
    assert cp.breakdown["checkpointed layer inputs"] == 65536 * 28 * 3584 * 2
    assert cp.breakdown["one layer's K and V, whole sequence"] == CONTEXT * 2 * 4 * 128 * 2  # 4 KV heads, dim 128


def test_ulysses_degrees_divide_the_attention_heads():
    _, plan = qwen_plan()
    # 28 heads: of 1, 2, 4, 8 only 1, 2, 4 divide them
    assert plan.ulysses.degree == 4 and 28 % plan.ulysses.degree == 0
    assert plan.ulysses.fits and plan.ulysses.offload_checkpoints and "ALST" in plan.ulysses.why


def test_a_context_that_fits_one_gpu_needs_no_split():
    _, plan = qwen_plan(context=4096)
    assert plan.fits_without_split
    assert plan.context_parallel.degree == 1 and not plan.context_parallel.chunked_loss


def test_too_few_gpus_say_so():
    _, plan = qwen_plan(context=2**22, gpus=2)
    assert not plan.context_parallel.fits and "add GPUs or shorten the context" in plan.context_parallel.why


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    folder = tmp_path_factory.mktemp("launch")
    code = main(["memory", str(QWEN7B), "--context", str(CONTEXT), "--mode", "train", "--gpus", "8",
                 "--gpu-type", "H100", "--launch-dir", str(folder), "--json"])
    assert code == 0
    return folder


def accelerate_launch_env(config_file: Path) -> tuple[object, dict[str, str]]:
    """What ``accelerate launch --config_file FILE train.py`` puts in the workers' environment."""
    from accelerate.commands.launch import (
        _validate_launch_command,
        launch_command_parser,
    )
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config_file), "train.py"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:  # as accelerate's launch_command does before calling the DeepSpeed launcher
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config.keys())
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return args, {k: v for k, v in env.items() if k.startswith(("PARALLELISM_CONFIG", "FSDP", "ACCELERATE"))}


def test_the_fsdp2_context_parallel_file_loads_with_accelerates_own_classes(launch):
    pytest.importorskip("accelerate")
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.parallelism_config import ParallelismConfig
    from accelerate.utils import FullyShardedDataParallelPlugin

    config = ClusterConfig.from_yaml_file(str(launch / ACCELERATE_FILE))
    assert config.distributed_type.value == "FSDP" and config.num_processes == 8
    args, env = accelerate_launch_env(launch / ACCELERATE_FILE)
    assert args.use_fsdp and args.num_processes == 8
    with mock.patch.dict(os.environ, env):
        parallelism = ParallelismConfig()
        fsdp = FullyShardedDataParallelPlugin()
    assert parallelism.cp_size == 8 and parallelism.total_size == 8 and parallelism.cp_enabled
    assert fsdp.fsdp_version == 2 and fsdp.activation_checkpointing


def test_the_ulysses_files_load_with_accelerate_and_deepspeed(launch):
    pytest.importorskip("accelerate")
    pytest.importorskip("deepspeed")
    from accelerate.parallelism_config import ParallelismConfig
    from accelerate.utils import DeepSpeedPlugin
    from deepspeed.runtime.config import DeepSpeedConfig

    args, env = accelerate_launch_env(launch / ULYSSES_ACCELERATE_FILE)
    assert args.use_deepspeed and args.num_processes == 8
    with mock.patch.dict(os.environ, env):
        parallelism = ParallelismConfig()
        plugin = DeepSpeedPlugin()
    assert parallelism.sp_size == 4 and parallelism.sp_backend == "deepspeed" and parallelism.total_size == 8
    assert plugin.zero_stage == 3
    deepspeed = DeepSpeedConfig(str(launch / DEEPSPEED_FILE))
    assert deepspeed.zero_optimization_stage == 3 and deepspeed.train_micro_batch_size_per_gpu == 1


def test_the_command_prints_the_degree_and_the_launch_command(tmp_path, capsys):
    code = main(["memory", str(QWEN7B), "--context", str(CONTEXT), "--mode", "train", "--gpus", "8",
                 "--gpu-type", "H100", "--launch-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "context parallel (accelerate, FSDP2): degree 8" in out
    assert f"launch: accelerate launch --config_file {tmp_path / ACCELERATE_FILE} train.py" in out


@pytest.mark.parametrize("argv, words", [
    (["--gpus", "8", "--gpu", "H100"], "--gpus plans training across GPUs"),
    (["--mode", "train", "--gpus", "8"], "--gpus plans training across GPUs"),
    (["--mode", "train", "--gpu", "H100", "--launch-dir", "x"], "--launch-dir writes multi-GPU launch files"),
])
def test_gpus_without_what_it_needs_is_a_usage_error(argv, words, capsys):
    assert main(["memory", str(QWEN7B), "--context", "4096", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and words in err and len(err.splitlines()) == 1

