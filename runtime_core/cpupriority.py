"""CpuPriority: which models' workers give way on the CPU, for the fair scheduler.

Queues alone cannot help when a busy model's workers already hold every core: a light
model's worker that wakes then waits for the kernel. So the scheduler's lanes also set the
CPU priority of their pools' workers (setting ``cpu_priority``; with it off, no priority
changes):

* weights become nice values: each model's workers get a nice value from its weight relative
  to the heaviest weight (each nice step is a factor of about 1.25 in CPU share), so the kernel
  shares the cores among busy models in those proportions, whatever the batching in their
  workers;
* while some model has work within its means (no more requests than workers, "modest"), the
  workers of every saturated model (more requests than workers) run at ``SCHED_IDLE``: the
  kernel runs the modest model's worker the moment it wakes, and the flooded ones get all the
  rest. They return to normal priority when the modest work is done, so a lone busy model does
  not yield to every other process on the host;
* likewise, while a cheap model (cost under
  :data:`~runtime_core.pools.base.COSTLY_REQUEST`) has modest work, the workers of every costly
  model with work, modest or saturated, run at ``SCHED_IDLE``: a cheap request must not wait
  behind a costly model's calls even when that model is within its means. A cheap model that
  goes idle keeps them yielding for :data:`CHEAP_HOLD` seconds more, so that a costly model
  beside a cheap one at a steady rate does not change priority twice per cheap request.

Mechanism: the scheduler marks a lane whose work changed (:meth:`CpuPriority.touched`) and
calls :meth:`CpuPriority.update` after each round of dispatch; only the marked lanes are
classified again, and every saturated (or costly) lane only when the first modest (cheap)
one arrives or the last one leaves. A pool whose worker count changes reports it through its
``on_capacity`` callback, which marks its lane.

What is bounded: one timer at most (the end of :data:`CHEAP_HOLD`), and work per update
proportional to the lanes whose priority may change. Nothing here waits, so nothing is
cancelled or times out; the timer only reclassifies. Worker death: the pool applies the nice
value and ``SCHED_IDLE`` it was last given to every worker it starts, replacements included.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Set

from runtime_core.lanes import IDLE, MODEST, SATURATED, Lane
from runtime_core.pools.base import COSTLY_REQUEST

#: Seconds a cheap model that went idle still keeps costly models' workers yielding: its next
#: request, a few milliseconds away at a steady rate, finds them already yielding, and their
#: priority is not flipped twice per request.
CHEAP_HOLD = 0.2


def _nice(top: float, weight: float) -> int:
    return min(19, max(0, round(math.log(top / weight) / math.log(1.25))))


class CpuPriority:
    """The CPU priority of every lane's workers. See the module docstring for the policy.

    ``lanes`` and ``active`` are the scheduler's own (every lane by key; the lanes with work
    queued or in flight), read here and never changed.
    """

    def __init__(self, enabled: bool, lanes: Mapping[str, Lane], active: Set[Lane]) -> None:
        self.enabled = enabled
        self._lanes = lanes
        self._active = active
        self._saturated: set[Lane] = set()
        self._background: set[Lane] = set()
        self._dirty: set[Lane] = set()  # lanes whose work changed since priorities were set
        self._modest = 0  # lanes classified MODEST
        self._modest_on = False
        self._cheap_modest: set[Lane] = set()  # MODEST lanes whose requests are cheap
        self._costly_busy: set[Lane] = set()  # MODEST or SATURATED lanes whose requests are costly
        self._cheap_on = False
        #: Loop time until which a cheap model that just went idle still counts as having work
        #: (:data:`CHEAP_HOLD`).
        self._cheap_until = 0.0
        self._cheap_timer: asyncio.TimerHandle | None = None
        self._weights: Counter[float] = Counter()
        self._top_weight = 0.0

    # ------------------------------------------------------------------ lanes come and go

    def added(self, lane: Lane) -> None:
        """``lane`` was added (it is in ``lanes``): give its workers their nice value."""
        self._weights[lane.weight] += 1
        self._update_weights(lane)

    def pool_replaced(self, lane: Lane) -> None:
        """``lane`` has a new pool: give its workers the lane's current priority."""
        self._update_weights(lane)
        if lane.background:
            lane.pool.set_background(True)

    def removed(self, lane: Lane) -> None:
        """``lane`` was removed (it is no longer in ``lanes``): forget it, and give the others
        new nice values if it had the heaviest weight."""
        self._weights[lane.weight] -= 1
        if not self._weights[lane.weight]:
            del self._weights[lane.weight]
        self._saturated.discard(lane)
        self._background.discard(lane)
        self._dirty.discard(lane)
        self._cheap_modest.discard(lane)
        self._costly_busy.discard(lane)
        if lane.state == MODEST:
            self._modest -= 1
        lane.state = IDLE
        self._update_weights(None)

    def touched(self, lane: Lane) -> None:
        """``lane``'s queue, in-flight count or pool capacity changed: classify it again at
        the next :meth:`update`."""
        if self.enabled:
            self._dirty.add(lane)

    def _update_weights(self, lane: Lane | None) -> None:
        """Set ``lane``'s nice value from its weight, or every lane's if the heaviest weight
        changed."""
        if not self.enabled or not self._weights:
            return
        top = max(self._weights)
        lanes: Iterable[Lane]
        if top != self._top_weight:
            self._top_weight = top
            lanes = self._lanes.values()
        else:
            lanes = [lane] if lane is not None else []
        for each in lanes:
            each.pool.set_nice(_nice(top, each.weight))

    # ------------------------------------------------------------------ classification

    def update(self) -> None:
        """Classify the touched lanes, then move workers into or out of ``SCHED_IDLE``."""
        if not self.enabled:
            return
        changed, self._dirty = self._dirty, set()
        for lane in changed:
            self._classify(lane)
        # A model with work that is within its means must not wait for the CPU behind one
        # that is flooded; while there is none, the flooded ones keep normal priority (so a
        # lone busy model does not yield to every other process on the host). Likewise a cheap
        # model's request must not wait behind a costly model's calls even when that model is
        # within its means (two clients of a forest on two workers fill both cores).
        modest = self._modest > 0
        if modest != self._modest_on:
            self._modest_on = modest
            changed |= self._saturated | self._background
        cheap = self._cheap_work()
        if cheap != self._cheap_on:
            self._cheap_on = cheap
            changed |= self._costly_busy | self._background
        for lane in changed:
            want = not lane.removed and ((modest and lane.state == SATURATED) or (cheap and lane in self._costly_busy))
            if want != lane.background:
                lane.pool.set_background(want)
                lane.background = want
                if want:
                    self._background.add(lane)
                else:
                    self._background.discard(lane)

    def _classify(self, lane: Lane) -> None:
        if lane not in self._active:
            state = IDLE
        elif lane.inflight + len(lane.queue) > lane.pool.parallelism:
            # Saturated: more work than the model has workers to run it on at once.
            state = SATURATED
        else:
            state = MODEST
        # The hold is for a cheap model between its requests. A lane measured costly on its
        # first reply (it counted as cheap until then) starts none: else a costly model would
        # yield for CHEAP_HOLD to nothing but its own first call.
        if lane in self._cheap_modest and state != MODEST and lane.cost < COSTLY_REQUEST:
            self._cheap_until = asyncio.get_running_loop().time() + CHEAP_HOLD
        self._cheap_modest.discard(lane)
        self._costly_busy.discard(lane)
        if lane.cost >= COSTLY_REQUEST:
            if state != IDLE:
                self._costly_busy.add(lane)
        elif state == MODEST:
            self._cheap_modest.add(lane)
        if state == lane.state:
            return
        if lane.state == MODEST:
            self._modest -= 1
        elif lane.state == SATURATED:
            self._saturated.discard(lane)
        if state == MODEST:
            self._modest += 1
        elif state == SATURATED:
            self._saturated.add(lane)
        lane.state = state

    def _cheap_work(self) -> bool:
        """Whether a cheap model has modest work, or had until less than :data:`CHEAP_HOLD`
        ago (then a timer updates again when the hold ends)."""
        if self._cheap_modest:
            return True
        if not self._cheap_until:
            return False
        loop = asyncio.get_running_loop()
        if loop.time() < self._cheap_until:
            if self._cheap_timer is None:
                self._cheap_timer = loop.call_at(self._cheap_until, self._cheap_expired)
            return True
        self._cheap_until = 0.0
        return False

    def _cheap_expired(self) -> None:
        self._cheap_timer = None
        self.update()
