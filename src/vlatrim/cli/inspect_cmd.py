"""``vlatrim inspect``: what vlatrim sees in a model."""

from __future__ import annotations

from dataclasses import dataclass

import tyro

from vlatrim.cli.registry import COMMANDS


@dataclass
class InspectCommand:
    """Show a model's components, backbone block list, attention/MLP layout and parameters."""

    model: tyro.conf.Positional[str]
    """A vlatrim checkpoint directory, a local transformers model directory, or a transformers config
    JSON file (built without weights: shapes and parameter counts only)."""
    out: str
    """Output directory (must not exist): inspect.json and summary.txt."""
    blocks_path: str | None = None
    """Dotted path of the backbone's block list (e.g. backbone.encoder.layer), when detection fails."""
    trust_remote_code: bool = False
    """Run the modeling code a transformers model directory ships (configuration_*.py / modeling_*.py named by
    auto_map in config.json, as OpenVLA's does). Off by default: such a model is refused, and no code from it runs."""

    def run(self) -> None:
        from pathlib import Path

        from vlatrim.families import family_of
        from vlatrim.models.adapters import inspect_model, load_model

        path, loaded = Path(self.model), None
        if path.is_dir() and any(path.glob("*.safetensors")):  # weights: open it as its family does
            family = family_of(path)
            loaded = (family.load(path, trust_remote_code=self.trust_remote_code), family.name)
        elif self.trust_remote_code:  # a bare config whose own code builds it
            loaded = load_model(self.model, trust_remote_code=self.trust_remote_code)
        _, text = inspect_model(self.model, self.out, self.blocks_path, loaded=loaded)
        print(text)
        print(f"wrote {self.out}/inspect.json")


COMMANDS.register("inspect")(InspectCommand)
