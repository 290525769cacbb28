"""Dtype policy per backbone and hardware, and the distribution strategy per environment."""

from __future__ import annotations

import json

import pytest

from hemaflow.modeling import distribute, precision

AMX = frozenset({"avx2", "avx512f", "amx_tile", "amx_bf16", "avx512_bf16"})
AVX2_ONLY = frozenset({"avx2", "fma"})


def test_bf16_for_plain_convs_on_an_amx_cpu():
    assert precision.choose_policy("resnet_mini", flags=AMX) == "mixed_bfloat16"
    assert precision.choose_policy("resnet50", flags=AMX) == "mixed_bfloat16"
    assert precision.choose_policy("small_cnn", flags={"avx512_bf16"}) == "mixed_bfloat16"


def test_float32_for_depthwise_nets_even_with_amx():
    for name in ("mobilenet_v3_small", "efficientnet_b0", "convnext_tiny"):
        assert precision.choose_policy(name, flags=AMX) == "float32"


def test_float32_without_native_bf16_and_mixed_float16_on_gpu():
    assert precision.choose_policy("resnet_mini", flags=AVX2_ONLY) == "float32"
    assert precision.choose_policy("mobilenet_v3_small", device="gpu") == "mixed_float16"


def test_explicit_precision_wins_and_bad_values_are_named():
    assert precision.choose_policy("mobilenet_v3_small", "mixed_bfloat16", flags=AMX) == (
        "mixed_bfloat16"
    )
    with pytest.raises(ValueError, match="model.precision"):
        precision.choose_policy("resnet_mini", "bfloat8")


def test_cpu_flags_reads_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16 amx_tile\n\nprocessor\t: 1\n")
    flags = precision.cpu_flags(info)
    assert {"avx2", "amx_bf16"} <= flags and precision.cpu_has_fast_bf16(flags)
    assert precision.cpu_flags(tmp_path / "missing") == frozenset()


def test_policy_scope_restores_the_global_policy():
    import keras

    before = keras.config.dtype_policy().name
    with precision.policy_scope("mixed_bfloat16"):
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == before


def test_strategy_kind_from_environment():
    two = json.dumps(
        {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}
    )
    assert distribute.strategy_kind({"TF_CONFIG": two}, gpus=0) == "multi_worker"
    assert distribute.strategy_kind({}, gpus=4) == "mirrored"
    assert distribute.strategy_kind({}, gpus=1) == "default"
    assert distribute.strategy_kind({}, gpus=0) == "default"
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.strategy_kind({"TF_CONFIG": "{not json"}, gpus=0)


def test_global_batch_scales_with_replicas():
    class TwoReplicas:
        num_replicas_in_sync = 2

    assert distribute.global_batch_size(64, TwoReplicas()) == 128
    assert distribute.global_batch_size(64, distribute.get_strategy({})) == 64
