"""The safetensors loader: shards, fused projections, tied embeddings, dtype, errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from checkpoints import build_checkpoint
from safetensors.torch import load_file, save_file

from lodger.engine.loader import INDEX_FILE, checkpoint_names, fused_target, load_model
from lodger.engine.model_config import SUPPORTED_ARCHITECTURES, ModelConfig

CPU = torch.device("cpu")


def load(model_dir, dtype=torch.float32):
    config = ModelConfig.from_pretrained(model_dir)
    return load_model(str(model_dir), config, CPU, dtype)


def copy_checkpoint(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_sharded_checkpoint_loads_the_same_weights(tmp_path, tokenizer_dir):
    single = build_checkpoint("qwen2", tmp_path / "single", tokenizer_dir=tokenizer_dir, seed=3)
    sharded = build_checkpoint(
        "qwen2", tmp_path / "sharded", tokenizer_dir=tokenizer_dir, seed=3, max_shard_size="200KB"
    )
    with open(sharded / INDEX_FILE) as f:
        assert len(set(json.load(f)["weight_map"].values())) >= 3
    assert not (sharded / "model.safetensors").exists()
    a, b = dict(load(single).named_parameters()), dict(load(sharded).named_parameters())
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_fused_projections_hold_the_checkpoint_tensors(qwen2_dir):
    model = load(qwen2_dir)
    config = model.config
    params = dict(model.named_parameters())
    stored = load_file(qwen2_dir / "model.safetensors")
    for name, tensor in stored.items():
        target = fused_target(name, config)
        if target is None:
            torch.testing.assert_close(params[name], tensor, rtol=0, atol=0)
        else:
            fused_name, start, rows = target
            assert name in checkpoint_names(fused_name)
            torch.testing.assert_close(params[fused_name][start : start + rows], tensor)
    qkv = params["model.layers.0.self_attn.qkv_proj.weight"]
    assert qkv.shape[0] == config.q_size + 2 * config.kv_size
    assert "model.layers.2.self_attn.qkv_proj.bias" in params  # Qwen2's q/k/v bias


def test_tied_embeddings_share_one_tensor(qwen3_dir, llama_dir):
    tied = load(qwen3_dir)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    untied = load(llama_dir)
    assert untied.lm_head.weight.data_ptr() != untied.model.embed_tokens.weight.data_ptr()


def test_missing_lm_head_is_tied(tmp_path, llama_dir):
    model_dir = copy_checkpoint(llama_dir, tmp_path / "ckpt")
    tensors = load_file(model_dir / "model.safetensors")
    del tensors["lm_head.weight"]
    save_file(tensors, model_dir / "model.safetensors", metadata={"format": "pt"})
    model = load(model_dir)
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_dtype_cast(llama_dir):
    model = load(llama_dir, torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.cos_sin_cache.dtype == torch.float32
    assert not any(p.is_meta for p in model.parameters())


def test_missing_tensor_is_named(tmp_path, llama_dir):
    model_dir = copy_checkpoint(llama_dir, tmp_path / "ckpt")
    tensors = load_file(model_dir / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    del tensors["model.norm.weight"]
    save_file(tensors, model_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing") as info:
        load(model_dir)
    assert "model.layers.1.self_attn.k_proj.weight" in str(info.value)
    assert "model.norm.weight" in str(info.value)
    assert "q_proj" not in str(info.value)


def test_wrong_shape_is_named(tmp_path, llama_dir):
    model_dir = copy_checkpoint(llama_dir, tmp_path / "ckpt")
    tensors = load_file(model_dir / "model.safetensors")
    tensors["model.layers.0.mlp.up_proj.weight"] = torch.zeros(3, 64)
    save_file(tensors, model_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model.layers.0.mlp.up_proj.weight.*\[3, 64\]"):
        load(model_dir)


def test_unexpected_tensor_is_named(tmp_path, llama_dir):
    model_dir = copy_checkpoint(llama_dir, tmp_path / "ckpt")
    tensors = load_file(model_dir / "model.safetensors")
    tensors["model.layers.0.self_attn.extra.weight"] = torch.zeros(2)
    save_file(tensors, model_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="model.layers.0.self_attn.extra.weight"):
        load(model_dir)


def test_unsupported_architecture_lists_supported(tmp_path, llama_dir):
    model_dir = copy_checkpoint(llama_dir, tmp_path / "ckpt")
    config = json.loads((model_dir / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="GPT2LMHeadModel") as info:
        ModelConfig.from_pretrained(model_dir)
    for name in SUPPORTED_ARCHITECTURES:
        assert name in str(info.value)


def test_no_safetensors_is_an_error(tmp_path, llama_dir):
    model_dir = copy_checkpoint(llama_dir, tmp_path / "ckpt")
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load(model_dir)
