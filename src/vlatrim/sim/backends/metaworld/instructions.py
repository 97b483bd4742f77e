"""One natural-language instruction per Meta-World task (what the VLA is told to do).

Written for vlatrim: imperative, lower-case, one short sentence naming the object and the goal, so
tasks that share objects (the four plate slides, the button presses) stay distinguishable by text.
"""

from __future__ import annotations

from vlatrim.sim.backends.metaworld.tasks import canonical_task

INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "pick up the ring nut and drop it over the peg",
    "basketball-v3": "grab the ball and put it through the hoop",
    "bin-picking-v3": "move the puck from one bin into the other bin",
    "box-close-v3": "pick up the lid and put it on the box",
    "button-press-topdown-v3": "press the button down from above",
    "button-press-topdown-wall-v3": "reach over the wall and press the button down from above",
    "button-press-v3": "push the button in from the front",
    "button-press-wall-v3": "go around the wall and push the button in from the front",
    "coffee-button-v3": "press the button on the coffee machine",
    "coffee-pull-v3": "pull the mug out from under the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "turn the dial half a turn",
    "disassemble-v3": "lift the ring nut off the peg",
    "door-close-v3": "swing the open door shut",
    "door-lock-v3": "turn the lock on the door to lock it",
    "door-open-v3": "pull the door open by its handle",
    "door-unlock-v3": "turn the lock on the door back to unlock it",
    "hand-insert-v3": "put the gripper into the hole in the table",
    "drawer-close-v3": "push the drawer closed",
    "drawer-open-v3": "pull the drawer open",
    "faucet-open-v3": "turn the faucet handle counter-clockwise to open it",
    "faucet-close-v3": "turn the faucet handle clockwise to close it",
    "hammer-v3": "pick up the hammer and drive the nail into the wall",
    "handle-press-side-v3": "press the handle down from the side",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up from the side",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever through a quarter turn",
    "pick-place-wall-v3": "pick up the puck, lift it over the wall and place it at the goal",
    "pick-out-of-hole-v3": "lift the puck out of the hole",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "plate-slide-v3": "slide the plate forward into the goal",
    "plate-slide-side-v3": "slide the plate sideways into the goal",
    "plate-slide-back-v3": "slide the plate back out of the goal toward the robot",
    "plate-slide-back-side-v3": "slide the plate sideways back out of the goal",
    "peg-insert-side-v3": "pick up the peg and insert it sideways into the hole",
    "peg-unplug-side-v3": "pull the peg sideways out of the socket",
    "soccer-v3": "push the ball into the goal net",
    "stick-push-v3": "grab the stick and use it to push the box to the goal",
    "stick-pull-v3": "grab the stick and use it to pull the box to the goal",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "push the puck around the wall to the goal",
    "push-back-v3": "push the puck backward to the goal",
    "reach-v3": "move the gripper to the goal point",
    "reach-wall-v3": "move the gripper over the wall to the goal point",
    "shelf-place-v3": "pick up the puck and put it on the shelf",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the edge of the table",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
}


def instruction_for(task: str) -> str:
    """The instruction for ``task`` (any spelling ``canonical_task`` accepts); unknown tasks raise."""
    return INSTRUCTIONS[canonical_task(task)]
