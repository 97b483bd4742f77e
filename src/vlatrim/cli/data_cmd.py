"""``vlatrim data metaworld``: scripted-expert demonstrations as a LeRobotDataset v3.0 directory."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from vlatrim.cli.output import setup_logging
from vlatrim.cli.registry import COMMANDS


@dataclass
class DataMetaWorldCommand:
    """Roll out Meta-World's scripted experts and write a LeRobotDataset v3.0 directory.

    Failed expert episodes are dropped and counted (more starts are tried, up to 2N+10 per task).
    An existing --out that holds an unfinished run with the same settings is resumed; any other
    non-empty --out is refused.
    """

    tasks: str
    """Task names, 'mt10', 'mt50' or difficulty groups (easy, medium, hard, very_hard), comma-separated."""
    episodes_per_task: int
    """Successful expert episodes to keep per task."""
    out: str
    """Output dataset directory (new, empty, or an unfinished run of the same settings to resume)."""
    image_size: int = 96
    """Side of the square camera image in pixels."""
    seed: int = 0
    """Run seed: picks the start configurations (disjoint from `vlatrim eval` starts)."""
    workers: int = 1
    """Worker processes (the dataset does not depend on it)."""
    max_steps: int = 500
    """Step limit per expert episode (at most Meta-World's 500)."""
    camera: str = "corner"
    """Meta-World camera name."""
    video: bool = False
    """Store the camera images as MP4 video (LeRobot's video dtype, H.264) instead of PNGs in the parquet."""
    video_pix_fmt: Literal["yuv444p", "yuv420p"] = "yuv444p"
    """With --video: yuv444p (full colour, closest to the frames, not playable in web browsers) or yuv420p
    (browser-playable, smaller, lossier)."""

    def run(self) -> None:
        from vlatrim.sim.backends.metaworld.demos import DemoConfig, generate_demos

        setup_logging()
        cfg = DemoConfig(
            tasks=self.tasks,
            episodes_per_task=self.episodes_per_task,
            image_size=self.image_size,
            seed=self.seed,
            camera=self.camera,
            max_steps=self.max_steps,
            workers=self.workers,
            video=self.video,
            video_pix_fmt=self.video_pix_fmt,
        )
        report = generate_demos(cfg, self.out)
        print(
            json.dumps(
                {
                    "out": self.out,
                    "episodes": report.episodes,
                    "frames": report.frames,
                    "failed_expert_episodes": report.failed,
                    "frames_per_second": report.frames_per_second,
                }
            )
        )


COMMANDS.register("data")({"metaworld": DataMetaWorldCommand})
