"""``vlatrim quantize``: a checkpoint's weights to int8 / int4 through torchao, after pruning."""

from __future__ import annotations

from dataclasses import dataclass

from vlatrim.cli.registry import COMMANDS


@dataclass
class QuantizeCommand:
    """Quantize a checkpoint (pruned or not, recovered or not) into a new one that every verb loads."""

    model: str
    """Float checkpoint directory of any policy family (a `vlatrim prune` / `recover` output, a trained model)."""
    out: str
    """Output directory (must not exist): the quantized checkpoint and quantize.json (bytes before and after)."""
    scheme: str
    """int8-weight (int8 weights, float activations), int8-dynamic (int8 weights and activations) or int4-weight
    (int4 weight groups of 128, CUDA). A scheme the device cannot run is refused with the list of those it can."""
    device: str = "cpu"
    """Where to quantize and check the scheme runs: cpu, cuda, cuda:N or auto. Run the checkpoint on the same kind
    of device: torchao's kernels differ between them."""
    trust_remote_code: bool = False
    """Run the modeling code a transformers model directory ships (auto_map in config.json). Off by default."""

    def run(self) -> None:
        from vlatrim.families.quantized import quantize_checkpoint

        out = self.out
        report = quantize_checkpoint(self.model, self.scheme, out, device=self.device,
                                     trust_remote_code=self.trust_remote_code)
        b, f = report["bytes"], report["file_bytes"]
        print(f"{report['scheme']}: {report['modules_quantized']} layers quantized; weights {b['before']:,} -> "
              f"{b['after']:,} bytes ({b['ratio']:.3f}x), model.safetensors {f['before']:,} -> {f['after']:,} bytes "
              f"({f['ratio']:.3f}x)")
        print(f"saved {out}")


COMMANDS.register("quantize")(QuantizeCommand)
