"""LeRobot SmolVLA policies (``lerobot.policies.smolvla``) as a policy family: ``lerobot_smolvla``.

A LeRobot policy directory holds ``config.json`` (``"type": "smolvla"``, ``input_features``,
``output_features``, ...), ``model.safetensors`` and its processor pipelines
(``policy_preprocessor.json`` / ``policy_postprocessor.json`` + normaliser state). vlatrim loads and
saves it through LeRobot's own classes, so ``SmolVLAPolicy.from_pretrained`` reloads what vlatrim
writes, processors included. lerobot is imported lazily, inside the methods: vlatrim imports without
it, and a LeRobot checkpoint is then refused with one line naming ``pip install vlatrim[lerobot]``.
Other LeRobot policy types (pi0, pi05, act, diffusion, ...) are refused with one line naming the type.

Structure (lerobot 0.4.4, ``SmolVLMWithExpertModel``):

- language: the VLM's text layers ``model.vlm_with_expert.vlm.model.text_model.layers``;
- vision: ``model.vlm_with_expert.vlm.model.vision_model.encoder.layers``;
- action: the action expert ``model.vlm_with_expert.lm_expert.layers``. Expert layer ``i`` runs beside
  VLM layer ``i`` (``get_model_layers`` zips them by index when both have as many layers): at
  ``i % self_attn_every_n_layers == 0`` the two attend jointly (self-attention over the concatenated
  sequence), otherwise the expert cross-attends to VLM layer ``i``'s keys and values through its own
  ``k_proj`` / ``v_proj``, whose input width is the VLM's KV width. Cutting layer ``i`` of one list
  therefore cuts layer ``i`` of the other (a symmetric coupling), and each kept pair must keep its
  attention role at its new index.

What vlatrim cuts in a SmolVLA. LeRobot rebuilds the VLM from ``vlm_model_name``'s config on every load
and keeps its first ``num_vlm_layers`` text layers, and its attention uses the VLM's head counts for the
expert too. So:

- paired depth (VLM text layer + expert layer; ``num_vlm_layers``), keeping each pair's attention role;
- an expert-only depth cut (``--keep-partners``) where lerobot 0.4.4 runs it (``expert_keep_sets``);
- query / KV heads and MLP channels of the VLM text layers, the same count in every layer (one config
  field each); expert layer i loses exactly VLM layer i's heads (``cut_partners``);
- vision-encoder depth (``vision_config.num_hidden_layers``).

A cut that changes the VLM's structure is saved with the VLM LeRobot must build: ``vlm/`` beside the policy
holds ``vlm_model_name``'s config with the cut fields and its processor files, and ``vlm_model_name`` names
it by absolute path (``write_cut_vlm``). Vocabulary cuts and removing the LM head are refused.

Loss (``loss``): the policy's own flow-matching loss (``SmolVLAPolicy.forward``: MSE between the
predicted and the true velocity, averaged over batch, chunk steps and the padded action dims). Chunk
steps past the episode's end are zeroed through the input SmolVLA reads for that, ``actions_id_pad``
(lerobot 0.4.4's dataset yields ``action_is_pad``, which SmolVLA does not read, so ``lerobot-train``
does not mask them). Every
sample of ``dataset`` carries its own noise and time draws, made by a ``torch.Generator`` seeded with
``(NOISE_SEED, frame row)``: the same sample always gets the same draws, whatever batch it lands in.
In eval mode (analysis, held-out checks, the tests) the loss uses those fixed draws, so it is a
deterministic function of the weights; in train mode (recovery) the policy draws fresh noise and time
itself from torch's RNG (which the trainer seeds), as LeRobot trains.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from vlatrim.errors import VlatrimError
from vlatrim.families.base import LossInfo, NoSamples, PolicyFamily, SampleSet, Split, register_family
from vlatrim.models.smolvla import VLM_DIR, VLM_MARK
from vlatrim.prune.plan import Coupling, PrunePlan

POLICY_TYPE = "smolvla"
VLM = "model.vlm_with_expert.vlm.model"
LANGUAGE_PATH = f"{VLM}.text_model.layers"
VISION_PATH = f"{VLM}.vision_model.encoder.layers"
EXPERT_PATH = "model.vlm_with_expert.lm_expert.layers"
NOISE_SEED = 20250607  # base seed of the per-sample noise / time draws (see the module docstring)
IMAGE_PREFIX, STATE_KEY, ACTION_KEY = "observation.images.", "observation.state", "action"
TOKENS_KEY, TOKEN_MASK_KEY = "observation.language.tokens", "observation.language.attention_mask"
# Keys of a dataset batch besides the preprocessed observation.
TARGET_KEY = "policy.action"  # the normalised action chunk (B, T, A) the loss regresses
PI_TYPES = ("pi0", "pi05", "pi0fast", "pi0_fast")
_VLM_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json", ".msgpack", ".h5")


def lerobot_available() -> bool:
    """Whether the lerobot package is importable (a directory named ``lerobot`` on sys.path, such as a
    test folder, is a namespace package without an origin and does not count)."""
    spec = importlib.util.find_spec("lerobot")
    return spec is not None and spec.origin is not None


def _is_lerobot_config(config: dict[str, Any]) -> bool:
    # LeRobot's PreTrainedConfig serialises its registered "type" beside the feature tables.
    return (isinstance(config.get("type"), str) and "model_type" not in config
            and ("input_features" in config or "output_features" in config))


def _check_supported(path: Path, config: dict[str, Any]) -> None:
    kind = config.get("type")
    if kind in PI_TYPES:
        raise VlatrimError(f"{str(path)!r} is a LeRobot {kind} policy, which vlatrim does not support: pi0 / pi0.5 "
                           "need LeRobot's patched transformers, which is not on PyPI; supported LeRobot type: smolvla")
    if kind != POLICY_TYPE:
        raise VlatrimError(f"{str(path)!r} is a LeRobot {kind!r} policy, which vlatrim does not support; supported "
                           "LeRobot type: smolvla")
    if not lerobot_available():
        raise VlatrimError(f"{str(path)!r} is a LeRobot smolvla checkpoint and lerobot is not installed: "
                           "pip install vlatrim[lerobot]")


def _in_hf_cache(repo_id: str) -> bool:
    """Whether the Hugging Face cache holds ``repo_id``'s config.json (a model LeRobot can build offline)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # not a valid repo id
        return False


def _vlm(model: nn.Module) -> nn.Module:
    return model.model.vlm_with_expert


def _source_vlm_dir(name: str) -> Path:
    """The directory holding ``vlm_model_name``'s files: the name itself, or its Hugging Face cache snapshot."""
    if Path(name).is_dir():
        return Path(name)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception as e:  # not cached (load refuses that before LeRobot runs; a direct caller gets this)
        raise VlatrimError(f"SmolVLA: vlm_model_name {name!r} is neither a local directory nor in the Hugging Face "
                           f"cache ({type(e).__name__}); the cut VLM's processor files are copied from it") from None


def vlm_shape(model: nn.Module) -> dict[str, int]:
    """The VLM structure fields a cut can change, read from the live tensors: text heads, KV heads and MLP
    width (every kept text layer has the same; ``check_plan`` refuses cuts that differ) and vision depth."""
    w = _vlm(model)
    vlm = w.get_vlm_model()
    layer = vlm.text_model.layers[0]
    head_dim = int(layer.self_attn.head_dim)
    return {"num_attention_heads": layer.self_attn.q_proj.out_features // head_dim,
            "num_key_value_heads": layer.self_attn.k_proj.out_features // head_dim,
            "intermediate_size": layer.mlp.up_proj.out_features,
            "vision_num_hidden_layers": len(vlm.vision_model.encoder.layers)}


def _config_shape(vlm_config: Any) -> dict[str, int]:
    tc, vc = vlm_config.text_config, vlm_config.vision_config
    return {"num_attention_heads": int(tc.num_attention_heads), "num_key_value_heads": int(tc.num_key_value_heads),
            "intermediate_size": int(tc.intermediate_size), "vision_num_hidden_layers": int(vc.num_hidden_layers)}


def write_cut_vlm(model: nn.Module, out: Path, destination: Path) -> str | None:
    """Write the VLM LeRobot must build for this policy into ``out/vlm`` when a cut changed its structure.

    LeRobot builds the VLM from ``vlm_model_name``'s config (and processor) on every load, so a cut VLM
    needs a config of its own: ``vlm/`` holds ``vlm_model_name``'s config with the cut's head counts, MLP
    width and vision depth, and every non-weight file of that model (processor, tokenizer, templates). The
    policy's ``vlm_model_name`` becomes the absolute path ``destination/vlm`` (LeRobot resolves a relative
    one against the working directory) and ``load_vlm_weights`` false (the weights are in
    ``model.safetensors``). A policy whose VLM is already such a directory (it holds ``vlatrim_vlm.json``)
    is written with its own copy, so that the new checkpoint does not depend on the old one. Returns the
    ``vlm_model_name`` it replaced when ``vlm/`` was written, else None.
    """
    import shutil

    from transformers import AutoConfig

    cfg = model.config
    src = _source_vlm_dir(cfg.vlm_model_name)
    base = AutoConfig.from_pretrained(str(src))
    live = vlm_shape(model)
    if live == _config_shape(base) and not (src / VLM_MARK).is_file():
        return None
    target = out / VLM_DIR
    target.mkdir(parents=True, exist_ok=True)
    if target.resolve() != src.resolve():  # saved into the directory it was loaded from: the files are there
        for f in sorted(src.iterdir()):
            if f.is_file() and f.name != "config.json" and not f.name.endswith(_VLM_WEIGHT_SUFFIXES):
                shutil.copy2(f, target / f.name)
    base.text_config.num_attention_heads = live["num_attention_heads"]
    base.text_config.num_key_value_heads = live["num_key_value_heads"]
    base.text_config.intermediate_size = live["intermediate_size"]
    base.vision_config.num_hidden_layers = live["vision_num_hidden_layers"]
    base.save_pretrained(target)
    source = json.loads((src / VLM_MARK).read_text())["source"] if (src / VLM_MARK).is_file() else cfg.vlm_model_name
    (target / VLM_MARK).write_text(json.dumps({"source": source, "shape": live}, indent=2) + "\n")
    old = cfg.vlm_model_name
    cfg.vlm_model_name = str((Path(destination) / VLM_DIR).resolve())
    cfg.load_vlm_weights = False
    return old


def _processors(model: nn.Module) -> tuple[Any, Any]:
    pre, post = getattr(model, "_vlatrim_processors", (None, None))
    if pre is None:
        raise VlatrimError("this SmolVLA policy has no LeRobot processors attached; load it with "
                           "vlatrim.families.load(<policy dir>) or attach_processors(policy, pre, post)")
    return pre, post


def attach_processors(model: nn.Module, pre: Any, post: Any) -> nn.Module:
    """Keep the policy's LeRobot pre- / post-processor pipelines with it (``save`` writes them)."""
    object.__setattr__(model, "_vlatrim_processors", (pre, post))  # plain attribute, not a submodule
    return model


def _run_block_hooks(layer: nn.Module, h_in: torch.Tensor, h_out: torch.Tensor) -> torch.Tensor:
    """Run ``layer``'s forward hooks as if ``layer(h_in)`` had returned ``h_out``; the hooks' result."""
    out: Any = h_out
    for hid, hook in list(layer._forward_hooks.items()):
        res = (hook(layer, (h_in,), {}, out) if layer._forward_hooks_with_kwargs.get(hid)
               else hook(layer, (h_in,), out))
        if res is not None:
            out = res
    return out if torch.is_tensor(out) else out[0]


def bridge_block_hooks(model: nn.Module) -> None:
    """Make forward hooks on SmolVLA's VLM text layers and expert layers fire.

    ``SmolVLMWithExpertModel.forward`` never calls its decoder layers: it calls their norms, projections
    and MLPs one by one, so hooks registered on a layer (what vlatrim's scorers use to read, skip or gate
    a block) would never run. Three small hooks per layer bridge that: the input of ``input_layernorm``
    is the block input h, the input of ``post_attention_layernorm`` is the mid-block residual r, and
    LeRobot adds r to the MLP output m to give the block output h' = r + m. When the layer carries
    forward hooks, the MLP hook runs them on (h, h') and returns ``result - r``, so LeRobot's sum gives the
    hooks' result (up to one float rounding); when it carries none, nothing changes and the policy
    computes exactly what LeRobot computes. Idempotent.
    """
    w = _vlm(model)
    for layer in [*w.get_vlm_model().text_model.layers, *w.lm_expert.layers]:
        if "_vlatrim_state" in layer.__dict__:
            continue
        # Plain attributes (not submodules), so a deepcopy of the model gets its own, pointing at its own layers.
        object.__setattr__(layer, "_vlatrim_state", {})
        for part in (layer.input_layernorm, layer.post_attention_layernorm, layer.mlp):
            object.__setattr__(part, "_vlatrim_block", layer)
        layer.input_layernorm.register_forward_pre_hook(_grab_block_input)
        layer.post_attention_layernorm.register_forward_pre_hook(_grab_residual)
        layer.mlp.register_forward_hook(_block_output_hooks)


def _grab_block_input(mod: nn.Module, args: tuple) -> None:
    mod._vlatrim_block._vlatrim_state["input"] = args[0]


def _grab_residual(mod: nn.Module, args: tuple) -> None:
    mod._vlatrim_block._vlatrim_state["residual"] = args[0]


def _block_output_hooks(mod: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
    layer = mod._vlatrim_block
    state = layer._vlatrim_state
    h, r = state.pop("input", None), state.pop("residual", None)
    if not layer._forward_hooks or h is None or r is None:
        return None
    return _run_block_hooks(layer, h, r + out) - r


# Config fields a distillation teacher must share with its student (what the compared velocities mean).
_TEACHER_FIELDS = ("input_features", "output_features", "chunk_size", "max_state_dim", "max_action_dim",
                   "normalization_mapping", "resize_imgs_with_padding")


def _plain(value: Any) -> Any:
    """A config value as plain data (LeRobot's feature and enum objects compare by their fields)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "shape") and hasattr(value, "type"):  # PolicyFeature
        return {"type": str(getattr(value.type, "value", value.type)), "shape": [int(d) for d in value.shape]}
    return getattr(value, "value", value)  # enums by value


def _normaliser_stats(model: nn.Module) -> dict[str, np.ndarray]:
    """The (un)normaliser steps' statistics of the policy's processors, as ``{"<key>.<stat>": array}``."""
    out: dict[str, np.ndarray] = {}
    for pipeline in _processors(model):
        for step in pipeline.steps:
            for key, stats in (getattr(step, "stats", None) or {}).items():
                for name, value in stats.items():
                    t = value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value)
                    out[f"{key}.{name}"] = t
    return out


def _unwrapped(model: nn.Module) -> nn.Module:
    """The SmolVLAPolicy inside the training loop's wrappers (DDP's ``module``, peft's base model)."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _flow(model: nn.Module, batch: dict[str, Any], noise: torch.Tensor | None, time: torch.Tensor | None,
          velocity: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SmolVLA's flow-matching loss on a ``dataset`` batch (``noise`` / ``time`` None: the policy draws them)
    and, with ``velocity``, the v_t (B, T, max_action_dim) its ``action_out_proj`` predicted in that pass."""
    b = {k: v for k, v in batch.items() if k not in ("noise", "time", TARGET_KEY, ACTION_KEY, "action_mask",
                                                       "loss_denominator")}
    b[ACTION_KEY] = batch[TARGET_KEY]
    b["actions_id_pad"] = ~batch["action_mask"].bool()  # the key SmolVLAPolicy.forward reads for padding
    if not velocity:
        return model(b, noise=noise, time=time)[0], None
    grabbed: list[torch.Tensor] = []
    handle = _unwrapped(model).model.action_out_proj.register_forward_hook(lambda _m, _i, out: grabbed.append(out))
    try:
        loss, _ = model(b, noise=noise, time=time)
    finally:
        handle.remove()
    return loss, grabbed[-1]


def image_keys(model: nn.Module) -> list[str]:
    return list(model.config.image_features)


def cameras(model: nn.Module) -> tuple[str, ...]:
    return tuple(k.removeprefix(IMAGE_PREFIX) for k in image_keys(model))


def _role(i: int, n: int) -> str:
    """Layer i's attention role for an alternation ``n`` (see ``_alternation``): joint self-attention or
    cross-attention to the VLM's keys and values."""
    return "self" if n > 0 and i % n == 0 else "cross"


def _alternation(w: nn.Module) -> int:
    """LeRobot's rule as one number n for ``_role``: without ``cross`` in ``attention_mode`` every layer is
    self-attention (n = 1); with it, layer i is self-attention when ``self_attn_every_n_layers`` = n > 0 and
    i % n == 0, and cross-attention otherwise (n <= 0: every layer, given as 0)."""
    if "cross" not in w.attention_mode:
        return 1
    return max(int(w.self_attn_every_n_layers), 0)


def expert_keep_sets(num_vlm_layers: int, n: int) -> list[list[int]]:
    """Expert-only keep sets that lerobot 0.4.4 runs beside ``num_vlm_layers`` VLM layers (one-to-one before).

    LeRobot pairs expert layer j with VLM layer j * m (m = num_vlm_layers // num_expert_layers), so keeping
    every m-th expert layer keeps each with its own VLM partner. It runs that only when every VLM layer left
    without an expert is a cross-attention layer (a self-attention layer with neither prefix nor expert in the
    denoising pass fails: ``torch.cat(): expected a non-empty list``), and when each kept expert's role at its
    new index j equals its partner's role at j * m (LeRobot builds an expert's cross-attention k / v
    projections by the expert's own index).
    """
    out = []
    for m in range(2, num_vlm_layers + 1):
        if num_vlm_layers % m:
            continue
        alone_are_cross = all(_role(i, n) == "cross" for i in range(num_vlm_layers) if i % m)
        roles_kept = all(_role(j * m, n) == _role(j, n) for j in range(num_vlm_layers // m))
        if alone_are_cross and roles_kept:
            out.append(list(range(0, num_vlm_layers, m)))
    return out


def valid_keep_sets(num_layers: int, n: int, limit: int = 6) -> list[list[int]]:
    """Kept layer sets (smallest cuts first) in which every kept layer keeps its attention role."""
    from itertools import combinations

    out = []
    for k in range(num_layers - 1, 0, -1):
        for keep in combinations(range(num_layers), k):
            if all(_role(old, n) == _role(new, n) for new, old in enumerate(keep)):
                out.append(list(keep))
                if len(out) >= limit:
                    return out
    return out


class SmolVLASamples(Dataset):
    """Samples of a LeRobot v3 dataset as SmolVLA batches.

    ``raw_batch(indices)`` is the batch LeRobot's preprocessor expects: each camera by its feature name
    (float (B, 3, H, W) in [0, 1]), ``observation.state`` (B, S), ``action`` (B, T, A) in environment
    units, ``action_is_pad`` (B, T) and ``task`` (B texts). ``__getitems__`` runs the policy's own
    preprocessor on it (newline, tokenize, normalise, device) and adds what the verbs need, all tensors:
    ``action`` (environment units, for offline action error), ``action_mask`` (B, T) (steps inside the
    episode), ``policy.action`` (the normalised chunk the loss regresses), ``noise`` (B, T, max_action_dim)
    and ``time`` (B,) (this sample's fixed flow-matching draws).
    """

    def __init__(self, model: nn.Module, frames_by_key: dict[str, Any], episodes: list[int]) -> None:
        from vlatrim.data.frames import ChunkDataset

        cfg = model.config
        self.keys = list(frames_by_key)
        first = frames_by_key[self.keys[0]]
        self.instructions = first.instructions
        self._tasks = first.task_index
        no_text = lambda texts: (torch.zeros(len(texts), 1, dtype=torch.long), torch.zeros(len(texts), 1, dtype=torch.long))
        self.chunks = {k: ChunkDataset(f, episodes, int(cfg.chunk_size), no_text) for k, f in frames_by_key.items()}
        self.episodes = self.chunks[self.keys[0]].episodes
        self.pre = _processors(model)[0]
        self.chunk_size, self.max_action_dim = int(cfg.chunk_size), int(cfg.max_action_dim)

    def __len__(self) -> int:
        return len(self.chunks[self.keys[0]])

    def _rows(self, indices: list[int]) -> torch.Tensor:
        """Dataset frame rows of the samples ``indices`` (the seeds of their noise / time draws)."""
        return self.chunks[self.keys[0]].rows[torch.as_tensor(indices, dtype=torch.long)]

    def raw_batch(self, indices: list[int]) -> dict[str, Any]:
        b = self.chunks[self.keys[0]].__getitems__(indices)
        rows = self._rows(indices)
        out: dict[str, Any] = {}
        for k, ds in self.chunks.items():
            img = ds.images[rows]  # (B, H, W, 3) uint8
            out[k] = img.permute(0, 3, 1, 2).float() / 255.0
        out[STATE_KEY] = b["state"]
        out[ACTION_KEY] = b["action"]
        out["action_is_pad"] = ~b["action_mask"]
        out["task"] = [self.instructions[int(self._tasks[r])] for r in rows.tolist()]
        return out

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        raw = self.raw_batch(list(indices))
        rows = self._rows(list(indices))
        action = raw[ACTION_KEY].clone()
        mask = ~raw["action_is_pad"]
        proc = self.pre(raw)
        out = {k: v for k, v in proc.items() if torch.is_tensor(v) and k != "action_is_pad"}
        out[TARGET_KEY] = out.pop(ACTION_KEY)
        out[ACTION_KEY], out["action_mask"] = action, mask
        noise, time = [], []
        for r in rows.tolist():
            g = torch.Generator().manual_seed(NOISE_SEED * 1_000_003 + int(r))
            noise.append(torch.randn(self.chunk_size, self.max_action_dim, generator=g))
            # SmolVLA's own time law: Beta(1.5, 1) scaled into [0.001, 1], drawn by inverse CDF (t = u^(1/1.5)).
            time.append(torch.rand((), generator=g) ** (1 / 1.5) * 0.999 + 0.001)
        out["noise"], out["time"] = torch.stack(noise), torch.stack(time)
        dev = out[TARGET_KEY].device
        return {k: v.to(dev) for k, v in out.items()}


class SmolVLAPolicyRunner:
    """A closed-loop policy (``vlatrim.sim.policy`` contract) around a SmolVLA and its processors: each
    ``predict`` runs the preprocessor, ``predict_action_chunk`` and the postprocessor, and returns the
    first ``n_action_steps`` actions of the chunk (what ``select_action`` would execute)."""

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu") -> None:
        from vlatrim.sim.policy import PolicyIO

        self.model = model.to(device).eval()
        self.device = device
        self.pre, self.post = _processors(model)
        cfg = model.config
        sizes = {int(f.shape[-1]) for f in cfg.image_features.values()}
        state = cfg.robot_state_feature
        self.n_action_steps = int(cfg.n_action_steps)
        self.io = PolicyIO(action_dim=int(cfg.action_feature.shape[0]),
                           state_dim=int(state.shape[0]) if state is not None else None,
                           cameras=cameras(model), image_size=sizes.pop() if len(sizes) == 1 else None,
                           chunk_size=self.n_action_steps)
        self.image_size = self.io.image_size
        self.chunk_size = self.n_action_steps

    def reset(self, n: int) -> None:
        self.model.reset()

    @torch.no_grad()
    def predict(self, obs: dict[str, Any]) -> np.ndarray:
        batch: dict[str, Any] = {}
        images = obs.get("images") or {}
        for cam in self.io.cameras:
            img = images.get(cam, obs.get("image") if cam == self.io.cameras[0] else None)
            if img is None:
                raise VlatrimError(f"SmolVLA policy reads camera {cam!r}; the observation has {sorted(images)}")
            batch[IMAGE_PREFIX + cam] = torch.as_tensor(np.asarray(img)).permute(0, 3, 1, 2).float() / 255.0
        if self.io.state_dim is not None:
            batch[STATE_KEY] = torch.as_tensor(np.asarray(obs["state"]), dtype=torch.float32)
        batch["task"] = list(obs["instruction"])
        self.model.reset()  # every call predicts a fresh chunk (the evaluator runs it open-loop)
        chunk = self.model.predict_action_chunk(self.pre(batch))  # (B, T, A) normalised
        actions = self.post(chunk)  # environment units, on the CPU
        return actions[:, : self.n_action_steps].float().numpy()


@register_family
class LeRobotSmolVLAFamily(PolicyFamily):
    """LeRobot SmolVLA checkpoints (``config.json`` with ``"type": "smolvla"``), through LeRobot's classes."""

    name = "lerobot_smolvla"
    description = "a LeRobot SmolVLA policy (SmolVLM + flow-matching action expert)"
    recovery_methods = ("full", "lora", "distill")

    # ------------------------------------------------------------------ checkpoints
    def recognizes(self, path: Path, config: dict[str, Any]) -> bool:
        # Every LeRobot policy directory is answered here, so that other types get a message naming them.
        return _is_lerobot_config(config)

    def owns(self, model: nn.Module) -> bool:
        if not lerobot_available():
            return False
        cls = type(model)
        return cls.__name__ == "SmolVLAPolicy" and cls.__module__.startswith("lerobot.")

    def load(self, path: Path, device: str | torch.device = "cpu", trust_remote_code: bool = False) -> nn.Module:
        from vlatrim.families.base import read_config

        _check_supported(path, read_config(path))
        from lerobot.policies.factory import make_pre_post_processors
        from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

        vlm = read_config(path).get("vlm_model_name")
        config = None
        own = Path(path) / VLM_DIR
        if (own / VLM_MARK).is_file() and vlm != str(own.resolve()):
            # A policy with its own vlm/ that was moved or copied: vlm_model_name names where it was written
            # (gone, or another policy's); the VLM that belongs to these weights is the one beside them.
            from lerobot.configs.policies import PreTrainedConfig

            config = PreTrainedConfig.from_pretrained(str(path))
            config.vlm_model_name = str(own.resolve())
        elif isinstance(vlm, str) and not Path(vlm).is_dir() and not _in_hf_cache(vlm):
            raise VlatrimError(f"{str(path)!r}: SmolVLA builds its VLM from vlm_model_name {vlm!r}, which is neither a "
                               "local directory nor in the Hugging Face cache, and vlatrim downloads nothing; download it "
                               "once (hf download <name>) or point vlm_model_name at a local copy")
        try:
            policy = SmolVLAPolicy.from_pretrained(str(path), config=config, strict=True)
        except (RuntimeError, ValueError, OSError) as e:
            raise VlatrimError(f"LeRobot could not load the SmolVLA policy {str(path)!r}: "
                               f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        overrides = {}
        if config is not None:  # moved or copied: its tokenizer step names the old vlm/ as well
            overrides = {"tokenizer_processor": {"tokenizer_name": config.vlm_model_name}}
        try:
            pre, post = make_pre_post_processors(policy.config, pretrained_path=str(path),
                                                 preprocessor_overrides=overrides)
        except (RuntimeError, ValueError, OSError, KeyError) as e:
            raise VlatrimError(f"LeRobot could not load the SmolVLA processors of {str(path)!r}: "
                               f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        attach_processors(policy, pre, post)
        bridge_block_hooks(policy)
        return policy.to(device).eval()

    def save(self, model: nn.Module, out: Path, destination: Path | None = None) -> None:
        old = write_cut_vlm(model, Path(out), Path(destination) if destination is not None else Path(out))
        model.save_pretrained(out)  # LeRobot's: config.json + model.safetensors
        pre, post = _processors(model)
        if old is not None:  # the tokenizer files are in vlm/ too: the tokenizer step reads them from there
            for step in pre.steps:
                if getattr(step, "tokenizer_name", None) == old:
                    step.tokenizer_name = model.config.vlm_model_name
        pre.save_pretrained(out)
        post.save_pretrained(out)

    # ------------------------------------------------------------------ loss and data
    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        fixed = not model.training
        loss, _ = _flow(model, batch, batch["noise"] if fixed else None, batch["time"] if fixed else None)
        return {"loss": loss}

    def check_teacher(self, student: nn.Module, teacher: nn.Module) -> None:
        """Refuse a teacher with other features, chunk, padding or normalisation than the student's."""
        s_cfg, t_cfg = student.config, teacher.config
        for f in _TEACHER_FIELDS:
            a, b = _plain(getattr(s_cfg, f, None)), _plain(getattr(t_cfg, f, None))
            if a != b:
                raise VlatrimError(f"teacher {f} is {b!r} but the student's is {a!r}; distil from a teacher with the "
                                   "student's features and action space (the policy it was pruned from)")
        s_stats, t_stats = _normaliser_stats(student), _normaliser_stats(teacher)
        for key in sorted(set(s_stats) | set(t_stats)):
            a, b = s_stats.get(key), t_stats.get(key)
            if a is None or b is None or a.shape != b.shape or not np.array_equal(a, b):
                raise VlatrimError(f"teacher normalization {key} differs from the student's; its actions would be in "
                                   "other units (distil from the policy the student was pruned from)")

    def distill_outputs(self, student: nn.Module, teacher: nn.Module,
                        batch: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Both policies' flow-matching loss and predicted velocity v_t (the real action dims) at the same
        noise and time: fresh draws by the student's own sampler in train mode (as LeRobot trains), the
        batch's fixed draws in eval mode. ``raw_mask``: the chunk steps inside the episode."""
        core = _unwrapped(student).model  # VLAFlowMatching
        target = batch[TARGET_KEY]
        noise, time = batch["noise"], batch["time"]
        if student.training:
            noise = core.sample_noise(tuple(noise.shape), target.device)
            time = core.sample_time(int(target.shape[0]), target.device)
        loss, v_s = _flow(student, batch, noise, time, velocity=True)
        with torch.no_grad():
            t_loss, v_t = _flow(teacher, batch, noise, time, velocity=True)
        a = int(target.shape[-1])
        return ({"loss": loss, "raw": v_s[..., :a], "raw_mask": batch["action_mask"].bool()},
                {"loss": t_loss, "raw": v_t[..., :a]})

    def loss_info(self, model: nn.Module) -> LossInfo:
        cfg = model.config
        return LossInfo("mse", int(cfg.chunk_size) * int(cfg.max_action_dim), "flow-matching mse")

    def _check_features(self, model: nn.Module, data: Path) -> None:
        from vlatrim.data.lerobot import LeRobotDataset

        feats = LeRobotDataset(data).features
        cfg = model.config
        problems = []
        for key in image_keys(model):
            if key not in feats:
                have = sorted(k for k in feats if k.startswith(IMAGE_PREFIX))
                problems.append(f"the policy reads {key}, the dataset has {', '.join(have) or 'no camera'}")
        for key, feat in ((STATE_KEY, cfg.robot_state_feature), (ACTION_KEY, cfg.action_feature)):
            if feat is None:
                continue
            want = int(feat.shape[0])
            got = feats.get(key, {}).get("shape")
            if got is None:
                problems.append(f"the policy needs {key} ({want} dims), the dataset has none")
            elif int(got[0]) != want:
                problems.append(f"{key} has {int(got[0])} dims in the dataset, the policy takes {want}")
        if problems:
            raise VlatrimError(f"dataset {str(data)!r} does not fit the SmolVLA policy: " + "; ".join(problems))

    def dataset(self, model: nn.Module, data: Path, split: Split = "train", val_fraction: float = 0.1) -> SampleSet:
        from vlatrim.data.frames import read_demo_frames, split_episodes

        self._check_features(model, data)
        frames = {k: read_demo_frames(data, image_key=k) for k in image_keys(model)}
        first = next(iter(frames.values()))
        train_eps, val_eps = split_episodes(first, val_fraction)
        episodes = {"train": train_eps, "held_out": val_eps, "all": train_eps + val_eps}[split]
        samples = SmolVLASamples(model, frames, episodes) if episodes else NoSamples()
        return SampleSet(samples, sorted(set(first.instructions.values())),
                         {"dataset": str(data), "split": split, "num_episodes": len(episodes),
                          "frames": int(len(first.images))},
                         {"train_episodes": train_eps, "held_out_episodes": val_eps})

    def position_mask(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor | None:
        """The real positions of the VLM's prefix sequence, laid out as LeRobot's ``embed_prefix`` builds it.

        Per camera, in ``image_features`` order (present cameras, then up to ``empty_cameras`` blank ones):
        ``<fake_token_around_image><global-img>``, the connector's image tokens, ``<fake_token_around_image>``
        (the special tokens only with ``add_image_special_tokens``, always real; the image tokens real unless
        the camera is blank or its ``<key>_padding_mask`` is False); then the language tokens, real where
        ``observation.language.attention_mask`` is; then one state token (real); then zeros up to
        ``prefix_length``. This is ``embed_prefix``'s ``pad_masks``, computed without running the vision encoder.
        """
        cfg, vcfg = model.config, _vlm(model).config
        lang = batch.get(TOKEN_MASK_KEY) if isinstance(batch, dict) else None
        if lang is None:
            return None
        lang = lang.bool()
        B, dev = lang.shape[0], lang.device
        present = [k for k in cfg.image_features if k in batch]
        missing = [k for k in cfg.image_features if k not in batch][: int(cfg.empty_cameras)]
        flow = model.model
        start = int(flow.global_image_start_token.numel()) if cfg.add_image_special_tokens else 0
        end = int(flow.image_end_token.numel()) if cfg.add_image_special_tokens else 0
        ones = lambda n: torch.ones(B, n, dtype=torch.bool, device=dev)
        parts: list[torch.Tensor] = []
        for key in present + missing:
            if key in batch:
                img = batch[key]
                h, w = (int(cfg.resize_imgs_with_padding[1]), int(cfg.resize_imgs_with_padding[0])) \
                    if cfg.resize_imgs_with_padding is not None else tuple(int(d) for d in img.shape[-2:])
                real = (batch[f"{key}_padding_mask"].bool().to(dev) if f"{key}_padding_mask" in batch
                        else torch.ones(B, dtype=torch.bool, device=dev))
            else:  # a blank camera: LeRobot copies the last present image's shape, with mask False
                real = torch.zeros(B, dtype=torch.bool, device=dev)
            patch = int(vcfg.vision_config.patch_size)
            n_img = (h // patch) * (w // patch) // int(vcfg.scale_factor) ** 2
            parts += [ones(start), real[:, None].expand(B, n_img), ones(end)]
        parts += [lang, ones(1)]  # language tokens, then the state token
        mask = torch.cat(parts, dim=1)
        if mask.shape[1] < int(cfg.prefix_length):
            mask = torch.cat([mask, torch.zeros(B, int(cfg.prefix_length) - mask.shape[1], dtype=torch.bool,
                                                device=dev)], dim=1)
        return mask

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def predict_batch(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """Action chunks (B, T, A) in environment units from a ``dataset`` batch (its fixed noise)."""
        _, post = _processors(model)
        obs = {k: v for k, v in batch.items() if k.startswith("observation.")}
        noise = batch["noise"].to(next(model.parameters()).device)
        model.reset()
        chunk = model.predict_action_chunk(obs, noise=noise)  # (B, T, A) normalised
        return post(chunk).float().cpu()

    def example_batch(self, model: nn.Module, batch_size: int, generator: torch.Generator,
                      instruction: str) -> dict[str, Any] | None:
        pre, _ = _processors(model)
        raw: dict[str, Any] = {}
        for key, feat in model.config.image_features.items():
            raw[key] = torch.rand(batch_size, *feat.shape, generator=generator)
        if model.config.robot_state_feature is not None:
            raw[STATE_KEY] = torch.randn(batch_size, *model.config.robot_state_feature.shape, generator=generator)
        raw["task"] = [instruction] * batch_size
        obs = {k: v for k, v in pre(raw).items() if torch.is_tensor(v)}
        obs["noise"] = torch.randn(batch_size, model.config.chunk_size, model.config.max_action_dim, generator=generator)
        return obs

    def sequence_info(self, model: nn.Module) -> dict[str, Any]:
        cfg = model.config
        vcfg = _vlm(model).config
        per_image = int(getattr(vcfg, "image_seq_len", 0) or 0) + (2 if cfg.add_image_special_tokens else 0)
        return {"image_tokens": per_image * (len(cfg.image_features) + int(cfg.empty_cameras)),
                "state_tokens": 1, "text_tokens": int(cfg.tokenizer_max_length),
                "action_queries": int(cfg.chunk_size), "chunk_size": int(cfg.n_action_steps)}

    def policy(self, model: nn.Module, device: str | torch.device = "cpu") -> Any:
        return SmolVLAPolicyRunner(model, device)

    # ------------------------------------------------------------------ structure
    def backbone_module(self, model: nn.Module, handle: Any) -> nn.Module:
        # SmolVLA runs its text layers itself: the first call of vlm_with_expert in sample_actions is the
        # prefix pass (images, language, state) through the VLM layers that fills the KV cache.
        return _vlm(model)

    def handle(self, model: nn.Module, blocks_path: str | None = None) -> Any:
        from vlatrim.models.adapters import locate_backbone

        return locate_backbone(model, blocks_path or LANGUAGE_PATH)

    def couplings(self, model: nn.Module, handle: Any) -> list[Coupling]:
        w = _vlm(model)
        nv, ne = len(w.get_vlm_model().text_model.layers), len(w.lm_expert.layers)
        step = nv // ne if ne else 0
        # LeRobot's get_model_layers: VLM layer i runs with expert layer i // step when i % step == 0.
        pairs = tuple((i, i // step) for i in range(nv) if step > 0 and i % step == 0 and i // step < ne)
        return [Coupling(LANGUAGE_PATH, EXPERT_PATH, pairs,
                         reason="SmolVLA's expert layer i attends with VLM layer i (joint self-attention, or "
                                "cross-attention to its keys and values)")]

    def check_cut(self, model: nn.Module, handle: Any, drops: dict[str, list[int]]) -> None:
        lang, expert = drops.get(LANGUAGE_PATH, []), drops.get(EXPERT_PATH, [])
        if not lang and not expert:
            return  # vision-encoder depth: any set of layers (LeRobot builds vision_config.num_hidden_layers of them)
        w = _vlm(model)
        nv, ne = len(w.get_vlm_model().text_model.layers), len(w.lm_expert.layers)
        n = _alternation(w)
        if nv != ne:
            raise VlatrimError(f"SmolVLA with num_expert_layers {ne} != num_vlm_layers {nv}: vlatrim cuts the depth only "
                               "of policies whose expert pairs one-to-one with the VLM layers")
        if expert and not lang:  # an expert-only cut (--keep-partners): the VLM keeps every layer
            keep = [j for j in range(ne) if j not in set(expert)]
            valid = expert_keep_sets(nv, n)
            if keep not in valid:
                layout = f"attention_mode={w.attention_mode!r}, self_attn_every_n_layers={w.self_attn_every_n_layers}"
                raise VlatrimError(
                    f"SmolVLA: an expert-only cut keeping expert layers {keep} of {ne} is not one lerobot 0.4.4 runs: it "
                    f"runs an expert shallower than the VLM only by keeping every m-th layer (m dividing "
                    f"num_vlm_layers={nv}) where every VLM layer left alone is a cross-attention layer and every kept "
                    f"expert keeps its role; valid keep sets here ({layout}): "
                    f"{'; '.join(map(str, valid)) or 'none'}; without --keep-partners the VLM partners go too")
            return
        if lang != expert:
            raise VlatrimError(f"SmolVLA: VLM layers {lang} cannot be cut while their expert partners stay (LeRobot "
                               "needs num_vlm_layers to be a multiple of num_expert_layers); cut the pairs (without "
                               "--keep-partners)")
        keep = [i for i in range(nv) if i not in set(lang)]
        broken = [(old, new) for new, old in enumerate(keep) if _role(old, n) != _role(new, n)]
        if broken:
            old, new = broken[0]
            valid = "; ".join(str(k) for k in valid_keep_sets(nv, n))
            raise VlatrimError(
                f"SmolVLA: keeping layers {keep} moves layer {old} ({_role(old, n)}-attention) to index {new}, where "
                f"self_attn_every_n_layers={w.self_attn_every_n_layers} puts {_role(new, n)}-attention; keep sets "
                f"whose layers keep their role, e.g. {valid}")

    def check_plan(self, model: nn.Module, handle: Any, plan: PrunePlan) -> None:
        """LeRobot builds the VLM from one config: every text layer has the same head counts and MLP width, and
        its attention (``eager_attention_forward``) uses the VLM's head counts for the expert too. So head and
        channel cuts must leave every kept VLM layer with the same counts; the vocabulary and the LM head stay."""
        if plan.vocab is not None:
            raise VlatrimError("SmolVLA: vocabulary cuts are refused (LeRobot tokenizes with vlm_model_name's tokenizer "
                               "and rebuilds the embedding from its config); cut depth, heads, MLP channels or the "
                               "vision encoder")
        if plan.drop_lm_head:
            raise VlatrimError("SmolVLA: --drop-lm-head is refused (LeRobot's SmolVLM keeps its LM head and loads "
                               "model.safetensors strictly)")
        if not plan.heads and not plan.mlp:
            return
        from vlatrim.prune.gqa import group_size

        w = _vlm(model)
        nv, ne = len(w.get_vlm_model().text_model.layers), len(w.lm_expert.layers)
        if plan.heads and (nv != ne or plan.pathway_drops.get(EXPERT_PATH, []) != plan.drop_blocks):
            raise VlatrimError(f"SmolVLA: head cuts need an expert that pairs one-to-one with the VLM layers (expert "
                               "layer i takes VLM layer i's heads); this one has num_expert_layers "
                               f"{ne - len(plan.pathway_drops.get(EXPERT_PATH, []))} beside num_vlm_layers "
                               f"{nv - len(plan.drop_blocks)}")
        kept = [b for b in range(handle.num_blocks) if b not in set(plan.drop_blocks)]
        lays = handle.layouts
        kv_kept = {b: {h // group_size(lays[b].attention.num_heads, lays[b].attention.num_kv_heads) for h in hs}
                   for b, hs in plan.heads.items()}
        for what, cut, full, field in (
                ("query heads", plan.heads, [lay.attention.num_heads for lay in lays], "num_attention_heads"),
                ("KV heads", kv_kept, [lay.attention.num_kv_heads for lay in lays], "num_key_value_heads"),
                ("MLP channels", plan.mlp, [lay.mlp.intermediate_size for lay in lays], "intermediate_size")):
            counts = {b: len(cut[b]) if b in cut else full[b] for b in kept}
            if len(set(counts.values())) > 1:
                raise VlatrimError(
                    f"SmolVLA: the cut leaves the VLM layers unequal {what} {counts}; LeRobot builds every text layer "
                    f"from one config field ({field}), so keep the same number in every layer (one --heads / "
                    "--mlp-ratio value)")

    def cut_partners(self, model: nn.Module, plan: PrunePlan, kept: dict[str, list[int]]) -> None:
        """Give each expert layer its VLM partner's head cut.

        Expert layer i attends with VLM layer i: at a joint (self-attention) layer the two sequences' queries,
        keys and values are concatenated head by head, so the expert keeps exactly the VLM layer's query and KV
        heads (rows of q / k / v, columns of o). At a cross-attention layer the expert's ``k_proj`` / ``v_proj``
        read the VLM layer's keys and values (their input columns follow the VLM's kept KV heads) and give the
        expert's own KV heads, cut alike so that query head h still reads KV head h // group.
        """
        from vlatrim.prune.ops import head_rows, slice_linear
        from vlatrim.prune.width import cut_attention_heads, set_attention_counts

        if not plan.heads:
            return
        w = _vlm(model)
        n = _alternation(w)
        before = (int(w.num_attention_heads), int(w.num_key_value_heads))
        counts = before
        for i, b in enumerate(kept.get(LANGUAGE_PATH, [])):
            if b not in plan.heads:
                continue
            att = w.lm_expert.layers[i].self_attn
            keep_q = torch.as_tensor(plan.heads[b], dtype=torch.long)
            cross = _role(i, n) == "cross"
            if cross:  # the VLM's kept KV heads are the input columns of the expert's k / v
                g = before[0] // before[1]
                vlm_kv = head_rows(keep_q.div(g, rounding_mode="floor").unique(), int(att.head_dim))
                slice_linear(att.k_proj, vlm_kv, "in")
                slice_linear(att.v_proj, vlm_kv, "in")
            keep_kv = cut_attention_heads(o=att.o_proj, num_heads=before[0], num_kv_heads=before[1],
                                          head_dim=int(att.head_dim), keep_q=keep_q, q=att.q_proj, k=att.k_proj,
                                          v=att.v_proj, what=f"heads of expert layer {i}")
            counts = (len(keep_q), len(keep_kv))
            set_attention_counts(att, counts[0], counts[1], int(att.head_dim))
        w.num_attention_heads, w.num_key_value_heads = counts
        w.lm_expert.config.num_attention_heads, w.lm_expert.config.num_key_value_heads = counts
        for layer in w.lm_expert.layers:  # attention modules point back at the shared, now true, config
            if getattr(layer.self_attn, "config", None) is not None:
                layer.self_attn.config = w.lm_expert.config

    def after_cut(self, model: nn.Module, kept: dict[str, list[int]]) -> None:
        w = _vlm(model)
        vlm = w.get_vlm_model()
        text = vlm.text_model
        nv, ne = len(text.layers), len(w.lm_expert.layers)
        cfg = model.config
        cfg.num_vlm_layers = nv
        if cfg.num_expert_layers > 0 or ne != nv:  # -1 means "as many as the VLM"; an expert-only cut sets it
            cfg.num_expert_layers = ne
        w.num_vlm_layers, w.num_expert_layers = nv, ne
        shape = vlm_shape(model)
        for c in {id(x): x for x in (w.config.text_config, text.config)}.values():
            c.num_hidden_layers = nv
            c.num_attention_heads, c.num_key_value_heads = shape["num_attention_heads"], shape["num_key_value_heads"]
            c.intermediate_size = shape["intermediate_size"]
        for c in {id(x): x for x in (w.config.vision_config, vlm.vision_model.config)}.values():
            c.num_hidden_layers = shape["vision_num_hidden_layers"]
        w.lm_expert.config.num_hidden_layers = ne

    # ------------------------------------------------------------------ recovery
    def trainable(self, model: nn.Module, method: str) -> list[str]:
        """``full``: what LeRobot leaves trainable (with ``train_expert_only``, the default: the expert and the
        action / time / state projections) plus the VLM text layers, which a cut removed layers from.

        Text-layer parameters whose output SmolVLA never reads stay frozen (they would get no gradient, and
        DDP requires one for every trainable parameter): the VLM's prefix output is discarded after the last
        layer that an expert layer runs beside, so that layer trains only ``input_layernorm``, ``k_proj`` and
        ``v_proj`` (the keys and values the expert attends to), and the layers after it train nothing.
        ``distill`` trains the same parameters as ``full``. Other methods: what requires grad as loaded.
        """
        names = super().trainable(model, method)
        if method not in ("full", "distill"):
            return names
        w = _vlm(model)
        nv, ne = len(w.get_vlm_model().text_model.layers), len(w.lm_expert.layers)
        step = nv // ne if ne else 0
        # LeRobot's get_model_layers: an expert layer runs beside VLM layer i when step <= 0, i == 0 or i % step == 0.
        last = max(i for i in range(nv) if step <= 0 or i == 0 or i % step == 0)
        read_at_last = ("input_layernorm.", "self_attn.k_proj.", "self_attn.v_proj.")
        wanted = set(names)
        for n, _ in model.named_parameters():
            if not n.startswith(f"{LANGUAGE_PATH}."):
                continue
            idx, rest = n[len(LANGUAGE_PATH) + 1:].split(".", 1)
            read = int(idx) < last or (int(idx) == last and rest.startswith(read_at_last))
            (wanted.add if read else wanted.discard)(n)
        return [n for n, _ in model.named_parameters() if n in wanted]

    def lora_defaults(self, model: nn.Module) -> tuple[str, tuple[str, ...]]:
        # Adapters on the VLM's text layers (the cut backbone); what LeRobot trains by default (the expert and
        # the action / time / state projections) trains in full beside them.
        return (f"{VLM}.text_model",
                ("model.vlm_with_expert.lm_expert", "model.action_in_proj", "model.action_out_proj",
                 "model.action_time_mlp_in", "model.action_time_mlp_out", "model.state_proj"))
