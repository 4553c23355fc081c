"""The world's dynamics: objects moving on a 128x128 canvas at 2 fps, and the event log.

Pure state, no drawing (render.py draws). An event at frame t is a change that is first
visible in frame t compared with frame t-1:
    enter   first frame where the object is visible: it pops in at a side with its centre
            already inside the canvas (by 0.3-0.6 of its half-extent), so that its shape,
            size and colour can be told from that frame alone
    leave   first frame where it is fully outside the canvas
    stop    it does not move between t-1 and t
    start   it moves again (after standing still)
    turn    it moves in a new direction between t-1 and t
    recolor its colour changed
Events are at least MIN_GAP frames apart, so each narration matches one event.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FPS = 2.0
CANVAS = 128  # world units = rendered pixels
COLORS = ("red", "green", "blue", "yellow", "purple")
SHAPES = ("square", "circle", "triangle", "cross")
SIZES = {"small": 7.0, "big": 11.0}  # half-extent in pixels
DIRS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
SIDES = ("left", "right", "top", "bottom")
ENTER_DIR = {"left": "right", "right": "left", "top": "down", "bottom": "up"}  # side -> motion
EXIT_SIDE = {"left": "left", "right": "right", "up": "top", "down": "bottom"}  # motion -> side
MIN_GAP = 4  # frames between events (2 s)
MARGIN = 10.0  # objects keep this far from the edges unless entering or leaving
MAX_ON_SCREEN = 4
MAX_ENTRIES = 40


@dataclass(frozen=True)
class Event:
    frame: int
    kind: str  # enter | leave | stop | start | turn | recolor
    obj: int
    color: str  # colour when the event happens (before a recolor)
    shape: str
    size: str
    side: str = ""  # enter / leave
    direction: str = ""  # turn / start
    new_color: str = ""  # recolor

    @property
    def time(self) -> float:
        return self.frame / FPS

    def to_dict(self) -> dict[str, object]:
        d = {k: getattr(self, k) for k in ("frame", "kind", "obj", "color", "shape", "size")}
        d["time"] = self.time
        for k in ("side", "direction", "new_color"):
            if getattr(self, k):
                d[k] = getattr(self, k)
        return d


@dataclass(frozen=True)
class ObjState:
    obj: int
    color: str
    shape: str
    size: str
    x: float
    y: float
    direction: str | None  # None: standing still

    @property
    def radius(self) -> float:
        return SIZES[self.size]

    def fully_visible(self) -> bool:
        r = self.radius
        return r <= self.x <= CANVAS - r and r <= self.y <= CANVAS - r


@dataclass
class _Obj:
    obj: int
    color: str
    shape: str
    size: str
    x: float
    y: float
    direction: str | None
    speed: float
    leaving: bool = False
    still_for: int = 0

    @property
    def r(self) -> float:
        return SIZES[self.size]

    def outside(self) -> bool:
        r = self.r
        return self.x < -r or self.x > CANVAS + r or self.y < -r or self.y > CANVAS + r

    def frames_to_wall(self) -> float:
        """Frames until the centre leaves the inner box [r + MARGIN, CANVAS - r - MARGIN]."""
        if self.direction is None:
            return float("inf")
        lo, hi = self.r + MARGIN, CANVAS - self.r - MARGIN
        dx, dy = DIRS[self.direction]
        pos, d = (self.x, dx) if dx else (self.y, dy)
        room = (hi - pos) if d > 0 else (pos - lo)
        return room / self.speed

    def snapshot(self) -> ObjState:
        return ObjState(self.obj, self.color, self.shape, self.size, self.x, self.y, self.direction)


@dataclass(frozen=True)
class Stream:
    seed: int
    n_frames: int
    events: tuple[Event, ...]
    states: tuple[tuple[ObjState, ...], ...]  # per frame: objects present (visible or partly)
    background: int  # seed of the static background

    @property
    def duration(self) -> float:
        return self.n_frames / FPS

    def events_at(self) -> dict[int, Event]:
        return {e.frame: e for e in self.events}


@dataclass
class _World:
    rng: np.random.Generator
    objs: list[_Obj] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    reserved: dict[int, int] = field(default_factory=dict)  # obj -> frame of its planned leave
    next_id: int = 0
    entries: int = 0

    def can_fire(self, t: int) -> bool:
        if self.events and t - self.events[-1].frame < MIN_GAP:
            return False
        return all(abs(r - t) >= MIN_GAP for r in self.reserved.values())

    def taken(self, ignore: _Obj | None = None) -> set[tuple[str, str]]:
        return {(o.color, o.shape) for o in self.objs if o is not ignore}

    def log(self, t: int, kind: str, o: _Obj, **kw: str) -> None:
        self.events.append(Event(t, kind, o.obj, o.color, o.shape, o.size, **kw))


def _move(o: _Obj) -> None:
    if o.direction is not None:
        dx, dy = DIRS[o.direction]
        o.x += dx * o.speed
        o.y += dy * o.speed


def _exit_frame(o: _Obj, t: int) -> int:
    """First frame after t where `o`, moving straight, is fully outside."""
    x, y, k = o.x, o.y, 0
    dx, dy = DIRS[o.direction or "left"]
    while True:
        k += 1
        x, y = x + dx * o.speed, y + dy * o.speed
        r = o.r
        if x < -r or x > CANVAS + r or y < -r or y > CANVAS + r:
            return t + k - 1


def _spawn(w: _World, t: int) -> None:
    rng = w.rng
    free = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in w.taken()]
    color, shape = free[rng.integers(len(free))]
    size = ("small", "big")[rng.integers(2)]
    side = SIDES[rng.integers(4)]
    r, speed = SIZES[size], float(rng.uniform(3.5, 6.5))
    along = float(rng.uniform(r + MARGIN + 4, CANVAS - r - MARGIN - 4))
    inset = float(rng.uniform(0.3, 0.6)) * r  # after this frame's move the centre is inside by `inset`:
    direction = ENTER_DIR[side]  # the object pops in mostly visible, so its enter narration is well-posed
    start = {
        "left": (inset - speed, along),
        "right": (CANVAS - inset + speed, along),
        "top": (along, inset - speed),
        "bottom": (along, CANVAS - inset + speed),
    }[side]
    o = _Obj(w.next_id, color, shape, size, start[0], start[1], direction, speed)
    w.next_id += 1
    w.entries += 1
    w.objs.append(o)
    w.log(t, "enter", o, side=side)


def _turn_options(o: _Obj) -> list[str]:
    opts = []
    for d in DIRS:
        if d == o.direction:
            continue
        probe = _Obj(0, "", "", o.size, o.x, o.y, d, o.speed)
        if probe.frames_to_wall() > 3:
            opts.append(d)
    return opts


def _urgent(w: _World, t: int) -> bool:
    """Handle the moving object closest to a wall; True if an event fired."""
    cands = [o for o in w.objs if not o.leaving and o.frames_to_wall() <= 9]
    if not cands:
        return False
    o = min(cands, key=lambda o: o.frames_to_wall())
    rng = w.rng
    choice = rng.choice(["turn", "stop", "leave"], p=[0.55, 0.3, 0.15])
    if choice == "leave" and (len(w.objs) > 1 or t > 40):
        ex = _exit_frame(o, t)
        if (
            all(abs(r - ex) >= MIN_GAP for r in w.reserved.values())
            and ex - (w.events[-1].frame if w.events else -99) >= MIN_GAP
        ):
            o.leaving = True
            w.reserved[o.obj] = ex
            return False
    if not w.can_fire(t):
        return False
    opts = _turn_options(o)
    if choice == "turn" and opts:
        o.direction = opts[rng.integers(len(opts))]
        w.log(t, "turn", o, direction=o.direction)
    else:
        o.direction = None
        o.still_for = 0
        w.log(t, "stop", o)
    return True


def _voluntary(w: _World, t: int) -> None:
    rng = w.rng
    live = [o for o in w.objs if not o.leaving]
    want_enter = len(w.objs) < MAX_ON_SCREEN and w.entries < MAX_ENTRIES
    p = 0.5 if not w.objs else 0.14
    if rng.random() > p:
        return
    moving = [o for o in live if o.direction is not None and o.frames_to_wall() > 4]
    still = [o for o in live if o.direction is None]
    visible = [o for o in live if o.snapshot().fully_visible()]
    kinds = {
        "enter": 0.5 * want_enter * (3.0 if len(w.objs) < 2 else 1.0),
        "stop": 1.0 * bool(moving),
        "turn": 1.5 * bool(moving),
        "start": (1.0 + sum(o.still_for > 8 for o in still)) * bool(still),
        "recolor": 1.0 * bool(visible),
    }
    total = sum(kinds.values())
    if total == 0:
        return
    kind = rng.choice(list(kinds), p=np.array(list(kinds.values())) / total)
    if kind == "enter":
        _spawn(w, t)
    elif kind == "stop":
        o = moving[rng.integers(len(moving))]
        o.direction, o.still_for = None, 0
        w.log(t, "stop", o)
    elif kind == "turn":
        o = moving[rng.integers(len(moving))]
        opts = _turn_options(o)
        if opts:
            o.direction = opts[rng.integers(len(opts))]
            w.log(t, "turn", o, direction=o.direction)
    elif kind == "start":
        o = max(still, key=lambda o: o.still_for + rng.random())
        opts = _turn_options(o)
        if opts:
            o.direction = opts[rng.integers(len(opts))]
            w.log(t, "start", o, direction=o.direction)
    else:
        o = visible[rng.integers(len(visible))]
        free = [c for c in COLORS if c != o.color and (c, o.shape) not in w.taken(o)]
        if free:
            new = free[rng.integers(len(free))]
            w.log(t, "recolor", o, new_color=new)
            o.color = new


def simulate(seed: int, duration_s: float) -> Stream:
    """Run the world for `duration_s` seconds at 2 fps; deterministic per seed."""
    rng = np.random.default_rng(seed)
    n = max(1, int(round(duration_s * FPS)))
    w = _World(rng)
    states: list[tuple[ObjState, ...]] = []
    first_entry = int(rng.integers(2, 8))
    for t in range(n):
        if t >= first_entry and not _urgent(w, t) and w.can_fire(t):  # at most one event per frame
            _voluntary(w, t)
        for o in w.objs:
            if o.direction is None:
                o.still_for += 1
            _move(o)
        for o in list(w.objs):  # a planned leave fires at its reserved frame
            if o.leaving and o.outside():
                side = EXIT_SIDE[o.direction or "left"]
                w.log(t, "leave", o, side=side)
                assert w.reserved.pop(o.obj) == t
                w.objs.remove(o)
        w.events.sort(key=lambda e: e.frame)
        states.append(tuple(o.snapshot() for o in w.objs))
    return Stream(seed, n, tuple(w.events), tuple(states), int(rng.integers(1 << 30)))
