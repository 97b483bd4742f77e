"""Structural rules that read a block's attention and MLP layout from its modules.

A rule looks at one residual block and returns a layout or None. Rules key on how the projections
connect (which Linear feeds which, and their shapes) and on the role names transformers uses for them
(``q_proj``/``query``/``qkv_proj``, ``gate_proj``/``up_proj``/``down_proj``), never on model class
names, so a new model family with the standard layout needs no code. A new layout is one more
registered rule; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from torch import nn

from vlatrim.models.adapters.layout import AttentionLayout, MLPLayout
from vlatrim.registry import Registry

AttentionRule = Callable[[nn.Module, Any], "AttentionLayout | None"]
MLPRule = Callable[[nn.Module, Any, "AttentionLayout | None"], "MLPLayout | None"]

ATTENTION_RULES: Registry[AttentionRule] = Registry("attention layout rule")
MLP_RULES: Registry[MLPRule] = Registry("MLP layout rule")

# Role names transformers (and torch.nn) give the projections.
_Q = ("q_proj", "query", "q", "wq", "q_lin")
_K = ("k_proj", "key", "k", "wk", "k_lin")
_V = ("v_proj", "value", "v", "wv", "v_lin")
_O = ("o_proj", "out_proj", "dense", "proj", "wo", "out_lin", "c_proj")
_QKV = ("qkv_proj", "qkv", "Wqkv", "query_key_value", "c_attn")
_GATE = ("gate_proj", "w1", "gate")
_UP = ("up_proj", "w3", "up")
_DOWN = ("down_proj", "w2", "down")
_GATE_UP = ("gate_up_proj", "gate_up")
_NO_ACT = (nn.Linear, nn.Dropout, nn.Identity, nn.LayerNorm, nn.Embedding)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _linear_children(mod: nn.Module) -> dict[str, nn.Linear]:
    return {n: c for n, c in mod.named_children() if isinstance(c, nn.Linear)}


def _pick(children: dict[str, nn.Linear], names: tuple[str, ...]) -> tuple[str, nn.Linear] | None:
    for n in names:
        if n in children:
            return n, children[n]
    return None


def _int_attr(obj: Any, *names: str) -> int | None:
    for n in names:
        v = getattr(obj, n, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def _head_dim(attn: nn.Module, config: Any, q_rows: int) -> int | None:
    """Head width: the attention module's own attribute first (true after cuts), then its config."""
    hd = _int_attr(attn, "head_dim", "attention_head_size", "head_size")
    if hd:
        return hd
    cfg = getattr(attn, "config", None) or config
    hd = _int_attr(cfg, "head_dim")
    if hd:
        return hd
    heads = _int_attr(attn, "num_heads", "num_attention_heads", "n_heads") or _int_attr(cfg, "num_attention_heads", "num_heads")
    return q_rows // heads if heads and q_rows % heads == 0 else None


def _kv_groups(attn: nn.Module, config: Any) -> int | None:
    g = _int_attr(attn, "num_key_value_groups")
    if g:
        return g
    cfg = getattr(attn, "config", None) or config
    h, kv = _int_attr(cfg, "num_attention_heads", "num_heads"), _int_attr(cfg, "num_key_value_heads")
    if h and kv and h % kv == 0:
        return h // kv
    return 1 if h else None


def _scopes(block: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    yield from block.named_modules()


@ATTENTION_RULES.register("separate_qkv")
def separate_qkv(block: nn.Module, config: Any) -> AttentionLayout | None:
    """q/k/v as three Linears in one module; the output projection beside them (Llama ``o_proj``,
    CLIP ``out_proj``) or in a sibling module (BERT ``attention.output.dense``)."""
    for name, mod in _scopes(block):
        lin = _linear_children(mod)
        q, k, v = _pick(lin, _Q), _pick(lin, _K), _pick(lin, _V)
        if not (q and k and v):
            continue
        (qn, ql), (kn, kl), (vn, vl) = q, k, v
        hidden = ql.in_features
        o = _pick(lin, _O)
        o_path = _join(name, o[0]) if o else None
        if o is None:
            # BERT keeps the output projection in a sibling: attention.self.{query,key,value} and
            # attention.output.dense. Search the parent scope for a Linear that maps the heads back.
            parent = name.rsplit(".", 1)[0] if "." in name else ""
            scope = block.get_submodule(parent) if parent else block
            for n2, m2 in scope.named_modules():
                full = _join(parent, n2)
                if (isinstance(m2, nn.Linear) and n2.rsplit(".", 1)[-1] in _O and not full.startswith(name + ".")
                        and m2.in_features == ql.out_features and m2.out_features == hidden):
                    o_path = full
                    break
        if o_path is None:
            continue
        hd = _head_dim(mod, config, ql.out_features)
        if not hd or ql.out_features % hd or kl.out_features % hd or kl.out_features != vl.out_features:
            continue
        return AttentionLayout(
            module=name, num_heads=ql.out_features // hd, num_kv_heads=kl.out_features // hd, head_dim=hd,
            o=o_path, q=_join(name, qn), k=_join(name, kn), v=_join(name, vn),
        )
    return None


@ATTENTION_RULES.register("fused_qkv")
def fused_qkv(block: nn.Module, config: Any) -> AttentionLayout | None:
    """One Linear producing [q; k; v] rows (Phi-3 ``qkv_proj``, Qwen2-VL vision ``qkv``)."""
    for name, mod in _scopes(block):
        lin = _linear_children(mod)
        qkv, o = _pick(lin, _QKV), _pick(lin, _O)
        if not (qkv and o):
            continue
        (qn, ql), (on, ol) = qkv, o
        q_rows = ol.in_features  # the output projection reads exactly the query heads
        hd = _head_dim(mod, config, q_rows)
        kv_rows2 = ql.out_features - q_rows
        if not hd or q_rows % hd or kv_rows2 <= 0 or kv_rows2 % (2 * hd):
            continue
        kv_rows = kv_rows2 // 2
        return AttentionLayout(
            module=name, num_heads=q_rows // hd, num_kv_heads=kv_rows // hd, head_dim=hd,
            o=_join(name, on), qkv=_join(name, qn), qkv_split=(q_rows, kv_rows, kv_rows),
        )
    return None


@ATTENTION_RULES.register("torch_mha")
def torch_mha(block: nn.Module, config: Any) -> AttentionLayout | None:
    """``torch.nn.MultiheadAttention`` (``nn.TransformerEncoderLayer``): ``qkv`` names the MHA module,
    whose ``in_proj_weight`` (3E, E) is the fused [q; k; v] matrix."""
    for name, mod in _scopes(block):
        if isinstance(mod, nn.MultiheadAttention) and mod._qkv_same_embed_dim:
            e, h = mod.embed_dim, mod.num_heads
            return AttentionLayout(
                module=name, num_heads=h, num_kv_heads=h, head_dim=e // h, o=_join(name, "out_proj"),
                qkv=name, qkv_split=(e, e, e),
            )
    return None


def _activation(block: nn.Module, scope: str, config: Any) -> str:
    cfg_act = getattr(config, "hidden_act", None) or getattr(config, "hidden_activation", None)
    if isinstance(cfg_act, str):
        return cfg_act
    mod = block.get_submodule(scope) if scope else block
    for _, m in mod.named_modules():
        if not list(m.children()) and not isinstance(m, _NO_ACT) and not any(True for _ in m.parameters()):
            return type(m).__name__
    fn = getattr(mod, "activation", None)
    return getattr(fn, "__name__", type(fn).__name__) if fn is not None else ""


@MLP_RULES.register("gated")
def gated(block: nn.Module, config: Any, attn: AttentionLayout | None) -> MLPLayout | None:
    """act(gate(x)) * up(x) -> down (Llama, Qwen, Gemma, Mistral)."""
    for name, mod in _scopes(block):
        lin = _linear_children(mod)
        g, u, d = _pick(lin, _GATE), _pick(lin, _UP), _pick(lin, _DOWN)
        if g and u and d and g[1].out_features == u[1].out_features == d[1].in_features:
            return MLPLayout(
                kind="gated", intermediate_size=u[1].out_features, down=_join(name, d[0]), up=_join(name, u[0]),
                gate=_join(name, g[0]), activation=_activation(block, name, config),
            )
    return None


@MLP_RULES.register("fused_gated")
def fused_gated(block: nn.Module, config: Any, attn: AttentionLayout | None) -> MLPLayout | None:
    """One [gate; up] Linear with 2 x intermediate rows -> down (Phi-3 ``gate_up_proj``)."""
    for name, mod in _scopes(block):
        lin = _linear_children(mod)
        gu, d = _pick(lin, _GATE_UP), _pick(lin, _DOWN)
        if gu and d and gu[1].out_features == 2 * d[1].in_features:
            return MLPLayout(
                kind="fused_gated", intermediate_size=d[1].in_features, down=_join(name, d[0]),
                gate_up=_join(name, gu[0]), activation=_activation(block, name, config),
            )
    return None


@MLP_RULES.register("plain")
def plain(block: nn.Module, config: Any, attn: AttentionLayout | None) -> MLPLayout | None:
    """act(up(x)) -> down, found by wiring: the one pair of Linears outside attention with
    up: hidden -> I and down: I -> hidden (BERT intermediate/output.dense, CLIP fc1/fc2, torch linear1/2)."""
    if attn is None:
        return None
    hidden = _hidden_of(block, attn)
    skip = attn.module + "." if attn.module else None
    lins = [(n, m) for n, m in block.named_modules() if isinstance(m, nn.Linear) and not (skip and n.startswith(skip))
            and n not in (attn.o, attn.q, attn.k, attn.v, attn.qkv)]
    pairs = [(un, ul, dn, dl) for un, ul in lins for dn, dl in lins
             if un != dn and ul.in_features == hidden and dl.out_features == hidden and ul.out_features == dl.in_features]
    if len(pairs) != 1:
        return None
    un, ul, dn, _ = pairs[0]
    scope = un.rsplit(".", 1)[0] if "." in un else ""
    return MLPLayout(kind="plain", intermediate_size=ul.out_features, down=dn, up=un,
                     activation=_activation(block, scope, config))


def _hidden_of(block: nn.Module, attn: AttentionLayout) -> int:
    o = block.get_submodule(attn.o)
    return o.out_features


def parse_attention(block: nn.Module, config: Any) -> AttentionLayout | None:
    """The first registered attention rule that recognises ``block``, else None."""
    for name in ATTENTION_RULES:
        layout = ATTENTION_RULES.get(name)(block, config)
        if layout is not None:
            return layout
    return None


def parse_mlp(block: nn.Module, config: Any, attn: AttentionLayout | None) -> MLPLayout | None:
    """The first registered MLP rule that recognises ``block`` (gated rules before the plain one)."""
    for name in ("gated", "fused_gated", *[n for n in MLP_RULES if n not in ("gated", "fused_gated", "plain")], "plain"):
        if name in MLP_RULES:
            layout = MLP_RULES.get(name)(block, config, attn)
            if layout is not None:
                return layout
    return None
