"""The edge server: accepts UE connections, runs the edge's layers and the LM head, returns tokens."""

from __future__ import annotations

import hmac
import logging
import socket
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass

import torch

from .. import UserError
from ..segments import SegmentCache, SplitModel, StaticSegmentCache, check_composition, resolve_decode
from ..wire import WIRE_FORMATS, decode
from .protocol import (
    ACTIVATION,
    CLOSE,
    CLOSED,
    DEFAULT_HOST,
    DEFAULT_PORT,
    ERROR,
    ERROR_CODES,
    EVICT_IDLE_S,
    FRAME_NAMES,
    HANDSHAKE_TIMEOUT_S,
    HEADER,
    IDLE_TIMEOUT_S,
    MAX_CONTEXT,
    MAX_ELEMENTS_PER_PACKET,
    MAX_FRAME_BYTES,
    MAX_HANDSHAKES,
    MAX_OPEN_FRAME_BYTES,
    MAX_QUEUE,
    MAX_SESSIONS,
    OPEN,
    PREFILL_CHUNK,
    PROTOCOL_VERSION,
    QUEUE_TIMEOUT_S,
    READY,
    TOKEN,
    TOKEN_BODY,
    TOKEN_ENV,
    PeerClosed,
    ProtocolError,
    activation_header,
    check_port,
    check_timeout,
    check_token,
    parse_json,
    recv_frame,
    send_frame,
    send_json,
    unpack_activation,
    wait_readable,
)

log = logging.getLogger("layersplit.serving")
TURNS_KEPT = 4096  # EdgeServer.turns: the last forward passes, whose order shows how sessions took turns


class TakeTurns:
    """One compute thread that runs jobs a slice at a time, in turn.

    A job is a generator that yields between its slices and returns its result (a plain function is
    a job of one slice). Each turn runs one slice of the job first in line and puts the job back at
    the end of the line, so a job waits for its first slice at most one slice of each job ahead of
    it, however long they are. One thread: on a CPU one forward already uses every core, and on CUDA
    a compiled step's graphs are recorded per thread, so one thread records them once.
    """

    def __init__(self, name: str):
        self._line: deque[tuple] = deque()  # (generator, future) in turn order
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def __len__(self) -> int:
        """Jobs waiting for their next turn (not the one running)."""
        with self._cv:
            return len(self._line)

    def submit(self, gen) -> Future:
        """Run the generator `gen` (not started yet: its body runs on the compute thread) in turn; its
        result is what it returns. RuntimeError once closed."""
        future = Future()
        with self._cv:
            if self._closed:
                gen.close()
                raise RuntimeError("the edge's compute thread has stopped")
            self._line.append((gen, future))
            self._cv.notify()
        return future

    def call(self, fn, *args) -> Future:
        """Run fn(*args) in one turn."""

        def one_slice():
            return fn(*args)
            yield  # makes this a generator function: a job of one slice

        return self.submit(one_slice())

    def close(self) -> None:
        """Stop after the slice that runs: jobs still in line fail with RuntimeError."""
        with self._cv:
            self._closed = True
            line, self._line = list(self._line), deque()
            self._cv.notify()
        for gen, future in line:
            gen.close()
            future.set_exception(RuntimeError("the edge stopped"))

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._line and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                gen, future = self._line.popleft()
            try:
                next(gen)
            except StopIteration as done:
                future.set_result(done.value)
                continue
            except BaseException as e:  # the job's fault, reported to whoever waits for it
                future.set_exception(e)
                continue
            with self._cv:
                if self._closed:
                    gen.close()
                    future.set_exception(RuntimeError("the edge stopped"))
                else:
                    self._line.append((gen, future))


@dataclass
class EdgeSession:
    """One request on the edge: its split, wire format and KV cache."""

    id: int
    split: int
    wire: str
    elements_per_packet: int
    cache: SegmentCache | StaticSegmentCache
    protect: int = 0  # K: each token's protected elements in every ACTIVATION (protocol.py)
    step: int = 0  # the next ACTIVATION step expected
    context: int = 0  # tokens in the KV cache
    bytes_in: int = 0
    packets: int = 0
    packets_missing: int = 0
    edge_s: float = 0.0


@dataclass
class _Holder:
    """A connection that holds a session slot."""

    idle_since: float | None = None  # since when it waits for its UE's next frame; None once a byte of it came
    evicted: bool = False  # its slot was claimed for a waiting connection: it leaves with ERROR "evicted"


class EdgeServer:
    """The edge: accepts UE connections, serves up to max_sessions at once, queues max_queue more.

    A connection first sends its OPEN, within handshake_timeout_s (per frame) or it is closed; at
    most max_handshakes connections wait for theirs, a newer one pushing the oldest out. Only a
    valid OPEN takes a session slot, which the connection keeps until it closes; when all are taken
    it waits in the queue, first come first served, and beyond the queue it is refused with an ERROR
    "busy" (at once when it connects to an edge that is already full that way). A thread per
    connection, so at most max_handshakes + max_queue + max_sessions threads. `token` (check_token;
    None: none): the shared secret every OPEN must carry, compared in constant time; an OPEN
    without it is refused as "unauthorized" before anything else of it is read.

    While a connection waits, a slot whose UE has said nothing for evict_idle_s (from the edge's
    last answer) is taken from it: that connection gets ERROR "evicted" and is closed, the longest
    silent first, one per waiting connection. So sessions that open and then stay silent cannot
    keep a real UE out, however often they reconnect: each newcomer queues behind it. Eviction
    rather than an idle timeout shorter than the queue timeout: a slow UE (a long prompt on a slow
    device) is never cut while nobody waits, and a waiting UE gets its slot after evict_idle_s, not
    after the idle timeout. evict_idle_s None: never evict (with max_queue 0 nothing ever waits).

    Forward passes of all sessions take turns on one compute thread (TakeTurns), a prompt's
    activation in chunks of prefill_chunk tokens (0: whole), so that other sessions' long prompts
    delay a session's step by at most one chunk each: fair turns rather than a compute budget, so
    nobody is refused and a lone session runs at full speed. Every way a session can end (CLOSE,
    disconnect, bad frame, timeout, eviction, server fault) frees its KV cache, or gives a static one
    back for the next session (`decode`: segments.DECODE_MODES or auto; a static cache holds
    max_context tokens, and every decoding step reads all of them).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        splits: list[int] | None = None,
        max_sessions: int = MAX_SESSIONS,
        max_queue: int = MAX_QUEUE,
        queue_timeout_s: float = QUEUE_TIMEOUT_S,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        max_context: int = MAX_CONTEXT,
        handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
        max_handshakes: int = MAX_HANDSHAKES,
        check: bool = True,
        decode: str = "eager",
        token: str | None = None,
        evict_idle_s: float | None = EVICT_IDLE_S,
        prefill_chunk: int = PREFILL_CHUNK,
    ):
        self.split_model = model if isinstance(model, SplitModel) else SplitModel(model)
        self.decode = resolve_decode(decode, self.split_model.device)
        n = self.split_model.n_layers
        self.splits = sorted(set(splits)) if splits else list(range(n))  # default: every split, 0..L-1
        for s in self.splits:
            self.split_model.validate_split(s)
        for name, value in (
            ("max_sessions", max_sessions),
            ("max_frame_bytes", max_frame_bytes),
            ("max_context", max_context),
            ("max_handshakes", max_handshakes),
        ):
            if value < 1:
                raise UserError(f"{name} must be at least 1, got {value}")
        if isinstance(prefill_chunk, bool) or not isinstance(prefill_chunk, int) or prefill_chunk < 0:
            raise UserError(
                f"prefill_chunk must be a number of tokens >= 0 (0: a whole prompt at once), got {prefill_chunk!r}"
            )
        self.prefill_chunk = prefill_chunk
        if max_queue < 0:
            raise UserError(f"max_queue must be >= 0, got {max_queue}")
        check_port(port)
        self.max_sessions, self.max_queue, self.max_handshakes = max_sessions, max_queue, max_handshakes
        self.queue_timeout_s = check_timeout(queue_timeout_s, "queue_timeout_s")
        self.idle_timeout_s = check_timeout(idle_timeout_s, "idle_timeout_s")
        self.handshake_timeout_s = check_timeout(handshake_timeout_s, "handshake_timeout_s")
        self.evict_idle_s = None if evict_idle_s is None else check_timeout(evict_idle_s, "evict_idle_s")
        if self.evict_idle_s is not None and self.evict_idle_s >= self.queue_timeout_s:
            raise UserError(
                f"evict_idle_s {self.evict_idle_s:g} must be shorter than queue_timeout_s "
                f"{self.queue_timeout_s:g}: a waiting UE would be refused before any idle session "
                "is evicted"
            )
        self.max_frame_bytes, self.max_context = max_frame_bytes, max_context
        self._token = check_token(token, "token")
        if check:
            check_composition(self.split_model, self.splits[len(self.splits) // 2])
        try:
            self._listener = socket.create_server((host, port), backlog=64)
        except OSError as e:
            raise UserError(
                f"cannot listen on {host}:{port} ({e.strerror or e}): choose another --port or --host"
            ) from e
        self.host, self.port = self._listener.getsockname()[:2]
        self._state = threading.Condition()
        self._active = 0  # connections holding a session slot
        self._holders: dict[socket.socket, _Holder] = {}  # those connections
        self._queue: deque[object] = deque()  # tickets of connections waiting for one (after a valid OPEN), in order
        self._evicting = 0  # holders evicted whose slot is not free yet
        self._pending: dict[socket.socket, tuple] = {}  # connections waiting for their OPEN -> peer, oldest first
        self._compute = TakeTurns("edge-compute")
        self.turns: deque[tuple[int, int]] = deque(maxlen=TURNS_KEPT)  # (session id, tokens) of each forward, in order
        self._stopping = threading.Event()
        self._threads: set[threading.Thread] = set()
        self._conns: set[socket.socket] = set()  # open connections, shut down by stop()
        self._next_session = 0
        self.sessions: dict[int, EdgeSession] = {}  # open sessions (each holds a KV cache)
        self._caches = weakref.WeakSet()  # every KV cache not yet garbage-collected (tests check it empties)
        self.stats = {
            "connections": 0,
            "refused_busy": 0,
            "handshakes_dropped": 0,
            "unauthorized": 0,
            "evicted": 0,
            "sessions_opened": 0,
            "sessions_closed": 0,
            "errors": 0,
            "steps": 0,
        }
        self._accept_thread: threading.Thread | None = None

    # --- life cycle ---
    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> "EdgeServer":
        """Accept connections in a background thread."""
        self._accept_thread = threading.Thread(target=self.serve_forever, name="edge-accept", daemon=True)
        self._accept_thread.start()
        return self

    def serve_forever(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stopping.is_set():
            try:
                conn, peer = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            self._admit(conn, peer)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        try:
            self._listener.close()
        except OSError:
            pass
        with self._state:
            self._state.notify_all()
            conns = list(self._conns)
        for conn in conns:  # wakes their threads from recv
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._accept_thread is not None and self._accept_thread is not threading.current_thread():
            self._accept_thread.join(timeout_s)
        with self._state:
            threads = list(self._threads)
        for t in threads:
            t.join(timeout_s)
        self._compute.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def live_caches(self) -> int:
        """KV caches of sessions still in memory (open sessions, and ended ones not yet collected);
        static caches given back for reuse are counted by split_model.idle_caches()."""
        return len(self._caches)

    # --- admission ---
    def _busy_message(self) -> str:
        return (
            f"busy: {self._active} sessions are being served and {len(self._queue)} are waiting "
            f"(limits: {self.max_sessions} sessions, {self.max_queue} queued); try again later"
        )

    def _admit(self, conn: socket.socket, peer) -> None:
        pushed_out = None
        with self._state:
            self.stats["connections"] += 1
            # Only connections that sent a valid OPEN are counted here, so idle ones never cause this.
            full = self._active >= self.max_sessions and len(self._queue) >= self.max_queue
            if full:
                self.stats["refused_busy"] += 1
                message = self._busy_message()
            else:
                if len(self._pending) >= self.max_handshakes:
                    # the oldest is the likeliest to be idle: a real UE sends its OPEN as soon as it connects
                    pushed_out = next(iter(self._pending))
                    pushed_peer = self._pending.pop(pushed_out)
                    self.stats["handshakes_dropped"] += 1
                self._pending[conn] = peer
                t = threading.Thread(
                    target=self._connection, args=(conn, peer), daemon=True, name=f"edge-{peer[0]}:{peer[1]}"
                )
                self._threads.add(t)
                self._conns.add(conn)
        if full:
            log.info("refused %s:%s: %s", *peer[:2], message)
            self._refuse(conn, message)
            return
        if pushed_out is not None:
            log.info(
                "dropped %s:%s: no OPEN yet and %d newer connections waiting for theirs",
                *pushed_peer[:2],
                self.max_handshakes,
            )
            try:
                pushed_out.shutdown(socket.SHUT_RDWR)  # its thread wakes from recv and closes it
            except OSError:
                pass
        t.start()

    @staticmethod
    def _refuse(conn: socket.socket, message: str) -> None:
        try:
            conn.settimeout(1.0)
            send_json(conn, ERROR, {"code": "busy", "message": message})
        except OSError:
            pass
        finally:
            _lingering_close(conn, linger_s=0.05)

    def _slot_free(self) -> bool:
        with self._state:
            return self._active < self.max_sessions

    def _take_slot(self, conn: socket.socket) -> bool:
        """After a valid OPEN: leave the handshakes and take a session slot, after a wait in the queue
        when all are taken. False when refused (the ERROR is sent) or pushed out meanwhile."""
        ticket = None
        with self._state:
            if conn not in self._pending:  # pushed out by newer connections: its socket is shut down
                return False
            del self._pending[conn]
            if self._active < self.max_sessions and not self._queue:  # a free slot goes to the queue first
                self._hold(conn)
                return True
            if len(self._queue) < self.max_queue:
                ticket = object()
                self._queue.append(ticket)
            else:
                self.stats["refused_busy"] += 1
                message = self._busy_message()
        if ticket is not None:
            if self._wait_for_slot(conn, ticket):
                return True
            self._count("refused_busy")
            message = f"busy: no session free after {self.queue_timeout_s:g} s in the queue; try again later"
        self._send_error(conn, "busy", message)
        return False

    def _hold(self, conn: socket.socket) -> None:  # with self._state held
        self._active += 1
        self._holders[conn] = _Holder()

    def _wait_for_slot(self, conn: socket.socket, ticket: object) -> bool:
        """Wait in the queue until this ticket is first and a slot is free, evicting idle holders meanwhile."""
        deadline = time.monotonic() + self.queue_timeout_s
        with self._state:
            try:
                while not self._stopping.is_set():
                    if self._queue[0] is ticket and self._active < self.max_sessions:
                        self._hold(conn)
                        return True
                    now = time.monotonic()
                    if now >= deadline:
                        return False
                    next_eviction = self._evict_idle(now)
                    self._state.wait(min(deadline - now, next_eviction))
                return False
            finally:
                self._queue.remove(ticket)
                self._state.notify_all()  # the next in line may find a slot free too

    def _evict_idle(self, now: float) -> float:
        """With self._state held: evict as many idle holders as the queue needs beyond the free slots
        and the evictions under way, the longest silent first; the seconds until another could be
        evicted (inf: none is waiting for its UE, and one that starts to notifies)."""
        need = len(self._queue) - (self.max_sessions - self._active) - self._evicting
        if self.evict_idle_s is None or need <= 0:
            return float("inf")
        idle = sorted(
            ((c, h) for c, h in self._holders.items() if h.idle_since is not None and not h.evicted),
            key=lambda item: item[1].idle_since,
        )
        for conn, holder in idle[:need]:
            silent = now - holder.idle_since
            if silent < self.evict_idle_s:
                return self.evict_idle_s - silent
            holder.evicted = True
            self._evicting += 1
            self.stats["evicted"] += 1
            try:  # its thread, blocked in recv, reads the end of the stream and answers ERROR "evicted"
                conn.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        return float("inf")

    def _waiting_for_ue(self, conn: socket.socket, waiting: bool) -> bool:
        """Mark a holder as waiting for its UE's next frame (evictable) or not; whether it was evicted."""
        with self._state:
            holder = self._holders[conn]
            holder.idle_since = time.monotonic() if waiting else None
            if waiting and self._queue:
                self._state.notify_all()  # a waiting connection may evict it in evict_idle_s
            return holder.evicted

    def _recv_before_open(self, conn: socket.socket) -> tuple[int, bytes] | None:
        """The next frame of a connection that holds no session slot yet, or None when it timed out
        (the ERROR is sent). It must come within handshake_timeout_s; when all slots are taken, within
        queue_timeout_s if that is shorter, as a queued connection would be refused as busy by then."""
        wait_s = self.handshake_timeout_s
        if not self._slot_free():
            wait_s = min(wait_s, self.queue_timeout_s)
        try:
            return recv_frame(conn, min(self.max_frame_bytes, MAX_OPEN_FRAME_BYTES), wait_s)
        except ProtocolError as e:
            if e.code == "too_large" and self.max_frame_bytes > MAX_OPEN_FRAME_BYTES:  # not --max-frame-bytes
                raise ProtocolError(
                    "too_large", f"a frame before OPEN may have at most {MAX_OPEN_FRAME_BYTES} bytes (send OPEN first)"
                ) from e
            raise
        except socket.timeout:
            if self._slot_free():
                self._count("handshakes_dropped")
                self._send_error(conn, "timeout", f"no OPEN within {wait_s:g} s; closing")
            else:
                self._count("refused_busy")
                self._send_error(
                    conn, "busy", f"busy: no session free after {wait_s:g} s in the queue; try again later"
                )
            return None

    # --- one connection ---
    def _connection(self, conn: socket.socket, peer) -> None:
        holding = False  # a session slot: taken with the first valid OPEN, kept until the connection ends
        session: EdgeSession | None = None
        conn.settimeout(self.handshake_timeout_s)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while not self._stopping.is_set():
                try:
                    if holding:
                        deadline = time.monotonic() + self.idle_timeout_s
                        self._waiting_for_ue(conn, True)  # evictable until the first byte of its next frame
                        try:
                            if not wait_readable(conn, self.idle_timeout_s):
                                raise socket.timeout("no frame")
                        finally:
                            self._waiting_for_ue(conn, False)
                        remaining = max(deadline - time.monotonic(), 1e-3)  # the idle timeout is per whole frame
                        ftype, payload = recv_frame(conn, self.max_frame_bytes, remaining)
                    else:
                        frame = self._recv_before_open(conn)
                        if frame is None:
                            break
                        ftype, payload = frame
                        if ftype == OPEN:  # checked before it takes a slot: a refused OPEN never waits
                            params = self._check_open(parse_json(payload))
                            if not self._take_slot(conn):
                                break
                            holding = True
                            conn.settimeout(self.idle_timeout_s)  # sends to a UE that stopped reading give up too
                            session = self._open(conn, params)
                            continue
                    session = self._handle(conn, ftype, payload, session)
                except ProtocolError as e:
                    self._count("errors")
                    log.info("%s:%s: %s: %s", *peer[:2], e.code, e)
                    self._send_error(conn, e.code, str(e))
                    if ERROR_CODES[e.code]:
                        break
                    session = self._end(session)
        except PeerClosed as e:
            if holding and self._waiting_for_ue(conn, False):  # the end of the stream came from an eviction
                log.info("%s:%s: evicted after %g s without a frame while a UE waited", *peer[:2], self.evict_idle_s)
                self._send_error(
                    conn,
                    "evicted",
                    f"no frame for {self.evict_idle_s:g} s while another UE waited for "
                    "a session; closing (reconnect to go on)",
                )
            elif session is not None:
                log.info("%s:%s: %s in session %d at step %d", *peer[:2], e, session.id, session.step)
        except socket.timeout:
            self._count("errors")
            self._send_error(conn, "timeout", f"no complete frame in {self.idle_timeout_s:g} s; closing")
        except OSError as e:  # reset by peer, broken pipe
            log.info("%s:%s: connection error %s", *peer[:2], e)
        except Exception as e:  # a fault of this server: report it, keep serving others
            self._count("errors")
            if self._stopping.is_set():  # a step cut short by stop()
                log.info("%s:%s: stopped in the middle of a step (%s)", *peer[:2], e)
            else:
                log.exception("%s:%s: internal error", *peer[:2])
            self._send_error(conn, "internal", f"{type(e).__name__}: {e}")
        finally:
            self._end(session)
            _lingering_close(conn)
            with self._state:
                self._pending.pop(conn, None)
                holder = self._holders.pop(conn, None)
                if holder is not None:
                    self._active -= 1
                    self._evicting -= holder.evicted
                self._state.notify_all()
                self._threads.discard(threading.current_thread())
                self._conns.discard(conn)

    def _count(self, key: str) -> None:
        with self._state:
            self.stats[key] += 1

    def _send_error(self, conn: socket.socket, code: str, message: str) -> None:
        try:
            conn.settimeout(1.0)
            send_json(conn, ERROR, {"code": code, "message": message})
        except OSError:
            pass

    def _end(self, session: EdgeSession | None) -> None:  # returns None so that `session = self._end(session)`
        """Forget a session: its KV cache is freed with the last reference."""
        if session is not None:
            with self._state:
                ended = self.sessions.pop(session.id, None) is not None
                if ended:
                    self.stats["sessions_closed"] += 1
            if ended and isinstance(session.cache, StaticSegmentCache):
                self._caches.discard(session.cache)
                try:  # on the compute thread: emptying it must not race a graph being recorded
                    self._compute.call(self.split_model.release, session.cache).result()
                except RuntimeError:  # the server stopped: nothing will reuse it
                    pass
        return None

    def _handle(self, conn: socket.socket, ftype: int, payload: bytes, session: EdgeSession | None):
        if ftype == OPEN:
            if session is not None:
                raise ProtocolError("malformed", "OPEN inside an open session (send CLOSE first)")
            return self._open(conn, self._check_open(parse_json(payload)))
        if ftype == ACTIVATION:
            if session is None:
                raise ProtocolError("no_session", "ACTIVATION outside a session (send OPEN first)")
            token, missing, seconds = self._step(session, payload)
            send_frame(conn, TOKEN, TOKEN_BODY.pack(session.step - 1, token, missing, seconds))
            return session
        if ftype == CLOSE:
            if session is None:
                raise ProtocolError("no_session", "CLOSE outside a session")
            totals = {
                "session": session.id,
                "steps": session.step,
                "context": session.context,
                "bytes_in": session.bytes_in,
                "packets": session.packets,
                "packets_missing": session.packets_missing,
                "edge_s": session.edge_s,
            }
            self._end(session)
            send_json(conn, CLOSED, totals)
            return None
        raise ProtocolError("bad_frame", f"a UE does not send {FRAME_NAMES[ftype]} frames")

    def _check_open(self, req: dict) -> tuple[int, str, int, int]:
        """(split, wire dtype, elements per packet, protect) of an OPEN this edge serves; ProtocolError otherwise."""
        if self._token is not None:  # first: the messages below would tell a stranger the model and splits
            theirs = req.get("token")
            if not isinstance(theirs, str) or not hmac.compare_digest(theirs.encode(), self._token.encode()):
                self._count("unauthorized")
                hint = f"give it with --token or {TOKEN_ENV}" if theirs is None else "this one is wrong"
                raise ProtocolError("unauthorized", f"this edge serves only UEs with its token: {hint}")
        if req.get("protocol") != PROTOCOL_VERSION:
            raise ProtocolError(
                "malformed", f"OPEN for protocol {req.get('protocol')!r}; this edge speaks {PROTOCOL_VERSION}"
            )
        mine = self.split_model.fingerprint
        theirs = req.get("model")
        if not isinstance(theirs, dict) or any(
            theirs.get(k) != mine[k] for k in ("model_type", "n_layers", "hidden_size", "vocab_size")
        ):
            raise ProtocolError("bad_model", f"the UE runs {theirs!r}; this edge serves {mine}")
        split, wire, k = req.get("split"), req.get("wire"), req.get("elements_per_packet")
        if isinstance(split, bool) or not isinstance(split, int) or split not in self.splits:
            raise ProtocolError(
                "bad_split",
                f"split {split!r} cannot be served: this edge serves "
                f"splits {format_splits(self.splits)} (0-based: split n puts n + 1 of {mine['n_layers']} "
                "layers on the UE)",
            )
        if wire not in WIRE_FORMATS:
            raise ProtocolError("malformed", f"unknown wire dtype {wire!r}: use one of {', '.join(WIRE_FORMATS)}")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_ELEMENTS_PER_PACKET:
            raise ProtocolError("malformed", f"elements_per_packet {k!r} outside 1..{MAX_ELEMENTS_PER_PACKET}")
        protect = req.get("protect", 0)
        if isinstance(protect, bool) or not isinstance(protect, int) or not 0 <= protect <= mine["hidden_size"]:
            raise ProtocolError(
                "malformed", f"protect {protect!r} outside 0..{mine['hidden_size']} (elements per token of this model)"
            )
        return split, wire, k, protect

    def _open(self, conn: socket.socket, params: tuple[int, str, int, int]) -> EdgeSession:
        """Start a session for a checked OPEN and answer READY."""
        split, wire, k, protect = params
        with self._state:
            self._next_session += 1
            cache = self.split_model.new_cache("edge", split, self.decode, self.max_context)
            session = EdgeSession(self._next_session, split, wire, k, cache, protect=protect)
            self.sessions[session.id] = session
            self._caches.add(session.cache)
            self.stats["sessions_opened"] += 1
        log.info(
            "session %d: split %d (%d layers on the UE, %d here), %s wire, packets of %d elements, "
            "%d protected per token",
            session.id,
            split,
            split + 1,
            self.split_model.n_layers - split - 1,
            wire,
            k,
            protect,
        )
        try:
            send_json(
                conn,
                READY,
                {
                    "session": session.id,
                    "split": split,
                    "n_layers": self.split_model.n_layers,
                    "max_frame_bytes": self.max_frame_bytes,
                    "max_context": self.max_context,
                },
            )
        except BaseException:
            self._end(session)  # the UE never learnt of it, so nothing else would end it
            raise
        return session

    def _step(self, session: EdgeSession, payload: bytes) -> tuple[int, int, float]:
        # the header's numbers first: unpacking allocates the packets its token count implies
        step, tokens = activation_header(payload)[:2]
        if step != session.step:
            raise ProtocolError("malformed", f"activation for step {step}; step {session.step} was expected")
        if session.context + tokens > self.max_context:
            raise ProtocolError(
                "too_long",
                f"the session would hold {session.context + tokens} tokens; this edge "
                f"keeps at most {self.max_context} per session (--max-context)",
            )
        step, tokens, data, scales, total, missing = unpack_activation(
            payload, self.split_model.hidden_size, session.wire, session.elements_per_packet, session.protect
        )
        hidden = decode(data, scales, (1, tokens, self.split_model.hidden_size), session.wire)

        chunk = self.prefill_chunk or tokens

        def forward():  # a chunk per turn: the other sessions' chunks and steps run in between
            seconds = 0.0
            for first in range(0, tokens, chunk):
                start = time.perf_counter()
                self.turns.append((session.id, min(chunk, tokens - first)))
                logits = self.split_model.edge_logits(session.split, hidden[:, first : first + chunk], session.cache)
                if first + chunk >= tokens:
                    token = int(logits.argmax())
                seconds += time.perf_counter() - start
                if first + chunk < tokens:
                    yield
            return token, seconds

        token, seconds = self._compute.submit(forward()).result()
        session.step += 1
        session.context += tokens
        session.bytes_in += HEADER.size + len(payload)
        session.packets += total
        session.packets_missing += missing
        session.edge_s += seconds
        self._count("steps")
        return token, missing, seconds


def _lingering_close(conn: socket.socket, linger_s: float = 0.2, drain_bytes: int = 1 << 16) -> None:
    """Close after an ERROR so that the peer reads it: a socket closed with unread input sends a
    reset that can destroy the frame in flight. Reads (and drops) at most drain_bytes for linger_s."""
    try:
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(linger_s)
        deadline, drained = time.monotonic() + linger_s, 0
        while drained < drain_bytes and time.monotonic() < deadline:
            chunk = conn.recv(min(4096, drain_bytes - drained))
            if not chunk:
                break
            drained += len(chunk)
    except OSError:
        pass
    finally:
        try:
            conn.close()
        except OSError:
            pass


def format_splits(splits: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3,7'."""
    parts, i = [], 0
    while i < len(splits):
        j = i
        while j + 1 < len(splits) and splits[j + 1] == splits[j] + 1:
            j += 1
        parts.append(str(splits[i]) if i == j else f"{splits[i]}-{splits[j]}")
        i = j + 1
    return ",".join(parts)
