"""Plug-ins of other installed packages: a module named in the ``vlatrim.plugins`` entry-point group is
imported before a registry is asked, so its family (or backend, scorer, pruning method) is found."""

from __future__ import annotations

import importlib
import json
import sys

import pytest

from vlatrim.errors import VlatrimError
from vlatrim.families import family_of
from vlatrim.utils.plugins import load_plugins

PLUGIN = '''
from vlatrim.families import PolicyFamily, register_family


@register_family
class PluginFamily(PolicyFamily):
    name = "plugin_family_from_entry_point"

    def recognizes(self, path, config):
        return config.get("model_type") == "plugin_vla"
'''


def _install(root, name: str, entry_points: str) -> None:
    """A minimal installed distribution: its metadata and entry points on sys.path."""
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)


def test_a_family_from_an_installed_plugin_is_found(tmp_path, monkeypatch):
    (tmp_path / "vlatrim_test_plugin_mod.py").write_text(PLUGIN)
    _install(tmp_path, "vlatrim_test_plugin", "[vlatrim.plugins]\nmy_vla = vlatrim_test_plugin_mod\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": "plugin_vla"}))
    assert "vlatrim_test_plugin_mod" not in sys.modules  # nothing imported it yet: the lookup does
    assert family_of(ckpt).name == "plugin_family_from_entry_point"
    assert "my_vla" in load_plugins()


def test_a_broken_plugin_is_named(tmp_path, monkeypatch):
    _install(tmp_path, "vlatrim_broken_plugin", "[vlatrim.plugins]\nbroken = no_such_module_for_vlatrim\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    with pytest.raises(VlatrimError, match=r"vlatrim plug-in 'broken' \(no_such_module_for_vlatrim\) cannot be "
                                           r"imported: No module named 'no_such_module_for_vlatrim'"):
        load_plugins()
