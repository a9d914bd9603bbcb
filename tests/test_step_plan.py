"""The step planner holds back only its own thread's scheduler warnings, and leaves the loggers as it found them."""

from __future__ import annotations

import logging
import threading

from sdxl.schedulers.lcm import LCMScheduler
from sdxl.step_plan import _quiet_schedulers

WARNS = {"timesteps": [899, 500]}  # custom LCM timesteps off its schedule: two warnings from sdxl.schedulers.lcm


def warnings_of(caplog, run) -> list[str]:
    caplog.clear()
    run()
    return [r.getMessage() for r in caplog.records if r.name == "sdxl.schedulers.lcm"]


def test_planning_quiets_its_own_thread_only(caplog):
    caplog.set_level(logging.WARNING, logger="sdxl.schedulers.lcm")
    level = logging.getLogger("sdxl.schedulers").level
    inside, release = threading.Event(), threading.Event()

    def planner():
        with _quiet_schedulers():
            LCMScheduler().set_timesteps(**WARNS)  # held back
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=planner)
    caplog.clear()
    thread.start()
    assert inside.wait(10)
    assert not [r for r in caplog.records if r.name == "sdxl.schedulers.lcm"]
    # another thread, while the planner is inside: its warnings pass
    assert len(warnings_of(caplog, lambda: LCMScheduler().set_timesteps(**WARNS))) == 2
    with _quiet_schedulers():  # a second planner overlapping the first, leaving before it
        assert warnings_of(caplog, lambda: LCMScheduler().set_timesteps(**WARNS)) == []
    release.set()
    thread.join(10)
    assert len(warnings_of(caplog, lambda: LCMScheduler().set_timesteps(**WARNS))) == 2
    assert logging.getLogger("sdxl.schedulers").level == level
