"""The edge server: accepts UE connections, runs the edge's layers and the LM head, returns tokens.

Its parts: admission.py (session slots, the queue, eviction), session.py (a session and the OPEN
that starts one), turns.py (the compute thread the sessions' forward passes take turns on).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import weakref
from collections import deque

import torch

from .. import UserError
from ..segments import SplitModel, StaticSegmentCache, check_composition, resolve_decode
from ..wire import decode
from .admission import Admission, SlotHolder, lingering_close
from .protocol import (
    ACTIVATION,
    CLOSE,
    CLOSED,
    DEFAULT_HOST,
    DEFAULT_PORT,
    ERROR_CODES,
    EVICT_IDLE_S,
    FRAME_NAMES,
    HANDSHAKE_TIMEOUT_S,
    HEADER,
    IDLE_TIMEOUT_S,
    MAX_CONTEXT,
    MAX_FRAME_BYTES,
    MAX_HANDSHAKES,
    MAX_QUEUE,
    MAX_SESSIONS,
    OPEN,
    PREFILL_CHUNK,
    QUEUE_TIMEOUT_S,
    READY,
    TOKEN,
    TOKEN_BODY,
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
from .session import EdgeSession, check_open
from .turns import TakeTurns

log = logging.getLogger("layersplit.serving")
TURNS_KEPT = 4096  # EdgeServer.turns: the last forward passes, whose order shows how sessions took turns


class EdgeServer(Admission):
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
        self._holders: dict[socket.socket, SlotHolder] = {}  # those connections
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
            lingering_close(conn)
            with self._state:
                self._pending.pop(conn, None)
                holder = self._holders.pop(conn, None)
                if holder is not None:
                    self._active -= 1
                    self._evicting -= holder.evicted
                self._state.notify_all()
                self._threads.discard(threading.current_thread())
                self._conns.discard(conn)

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
        """check_open against this edge's token, model and splits; a refused token is counted."""
        try:
            return check_open(req, self._token, self.split_model.fingerprint, self.splits)
        except ProtocolError as e:
            if e.code == "unauthorized":
                self._count("unauthorized")
            raise

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
