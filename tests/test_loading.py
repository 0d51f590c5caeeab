import pytest
import torch

from edgeprune.core.arch import get_arch
from edgeprune.core.checkpoint import arch_from_state_dict, unwrap
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.models.deit import VisionTransformer
from edgeprune.core.source import resolve
from tests.conftest import dynamicvit_predictor_keys, make_state_dict, timm_vit_keys


@pytest.mark.parametrize(
    "name,dim,heads", [("deit_tiny", 192, 3), ("deit_small", 384, 6), ("deit_base", 768, 12)]
)
def test_deit_has_timm_parameter_names(name, dim, heads):
    a = get_arch(name)
    assert (a.embed_dim, a.num_heads, a.depth, a.patch_size, a.img_size) == (
        dim,
        heads,
        12,
        16,
        224,
    )
    if name == "deit_base":
        return  # same code path; skip building 86M params
    sd = VisionTransformer(a).state_dict()
    assert set(sd) == timm_vit_keys(12)
    assert sd["blocks.0.attn.qkv.weight"].shape == (3 * dim, dim)
    assert sd["pos_embed"].shape == (1, 197, dim)
    assert sd["head.weight"].shape == (1000, dim)


@pytest.mark.parametrize("wrapper", ["model", "model_ema", "state_dict", None])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_checkpoint_wrappers_and_prefix(write_ckpt, wrapper, prefix):
    sd = make_state_dict("deit_tiny:dynamicvit@0.7")
    sd = {prefix + k: v for k, v in sd.items()}
    obj = {wrapper: sd, "epoch": 300} if wrapper else sd
    src = resolve(str(write_ckpt(obj)))
    assert src.method.name == "dynamicvit"
    assert src.arch.name == "deit_tiny"
    assert src.plan.tokens_per_block == (197,) * 3 + (138,) * 3 + (97,) * 3 + (68,) * 3


def test_dynamicvit_checkpoint_keys_are_the_published_ones():
    sd = make_state_dict("deit_tiny:dynamicvit@0.7")
    assert set(sd) == timm_vit_keys(12) | dynamicvit_predictor_keys(3)
    c = 192
    assert sd["score_predictor.0.in_conv.1.weight"].shape == (c, c)
    assert sd["score_predictor.0.out_conv.0.weight"].shape == (c // 2, c)
    assert sd["score_predictor.0.out_conv.2.weight"].shape == (c // 4, c // 2)
    assert sd["score_predictor.0.out_conv.4.weight"].shape == (2, c // 4)


def test_dense_checkpoint_detected_and_loaded_strictly(write_ckpt):
    sd = make_state_dict("deit_tiny", seed=3)
    src = resolve(str(write_ckpt({"model": sd})))
    assert src.method.name == "dense" and not src.is_builtin
    got = src.model().state_dict()
    assert all(torch.equal(got[k], sd[k]) for k in sd)


def test_dynamicvit_ratio_from_released_file_name(write_ckpt):
    sd = make_state_dict("deit_tiny:dynamicvit@0.7")
    src = resolve(str(write_ckpt({"model": sd}, "deit_tiny_r0.5.pth")))
    assert src.config.keep_ratios == (0.5, 0.25, 0.125)
    assert src.plan.tokens_per_block[-1] == int(196 * 0.125) + 1


def test_keep_override_on_checkpoint(write_ckpt):
    sd = make_state_dict("deit_tiny:dynamicvit@0.7")
    src = resolve(str(write_ckpt(sd)), keep="0.9,0.8,0.5")
    assert src.plan.tokens_per_block[3::3] == (
        int(196 * 0.9) + 1,
        int(196 * 0.8) + 1,
        int(196 * 0.5) + 1,
    )


def test_arch_from_shapes_and_heads_override():
    sd = make_state_dict("deit_small")
    assert arch_from_state_dict(sd).name == "deit_small"
    custom = arch_from_state_dict(sd, num_heads=12)
    assert custom.num_heads == 12 and custom.name == "custom"
    with pytest.raises(EdgepruneError, match="expected \\(100, 3, P, P\\)"):
        arch_from_state_dict({**sd, "cls_token": torch.zeros(1, 1, 100)}, None)


def test_unknown_layout_names_found_and_expected():
    with pytest.raises(EdgepruneError) as e:
        arch_from_state_dict({"encoder.layer.0.weight": torch.zeros(2)})
    line = e.value.one_line()
    assert "encoder.layer.0.weight" in line and "cls_token" in line and "\n" not in line


def test_unwrap_rejects_non_state_dicts():
    with pytest.raises(EdgepruneError, match="no state_dict"):
        unwrap([1, 2, 3])
    with pytest.raises(EdgepruneError, match="no tensors"):
        unwrap({"epoch": 3, "args": "x"})


def test_method_mismatch_is_refused(write_ckpt):
    sd = make_state_dict("deit_tiny:dynamicvit@0.7")
    with pytest.raises(EdgepruneError, match="dynamicvit checkpoint"):
        resolve(str(write_ckpt(sd)), method="dense")
