"""The edge's session slots: new connections' handshakes, the queue, eviction of silent sessions.

Admission is mixed into EdgeServer (edge.py), whose __init__ sets the state it keeps under
self._state: _active (connections holding a slot), _holders (those connections), _queue (tickets
of those waiting for one), _evicting, _pending (those waiting for their OPEN); and stats, _threads,
_conns. The rules are EdgeServer's docstring.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass

from .protocol import ERROR, MAX_OPEN_FRAME_BYTES, ProtocolError, recv_frame, send_json

log = logging.getLogger("layersplit.serving")


@dataclass
class SlotHolder:
    """A connection that holds a session slot."""

    idle_since: float | None = None  # since when it waits for its UE's next frame; None once a byte of it came
    evicted: bool = False  # its slot was claimed for a waiting connection: it leaves with ERROR "evicted"


class Admission:
    """EdgeServer's admission: which connection holds a session slot, waits for one or is refused;
    and the two helpers every connection uses, _count (a stat) and _send_error."""

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
            lingering_close(conn, linger_s=0.05)

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
        self._holders[conn] = SlotHolder()

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

    def _count(self, key: str) -> None:
        with self._state:
            self.stats[key] += 1

    def _send_error(self, conn: socket.socket, code: str, message: str) -> None:
        try:
            conn.settimeout(1.0)
            send_json(conn, ERROR, {"code": code, "message": message})
        except OSError:
            pass


def lingering_close(conn: socket.socket, linger_s: float = 0.2, drain_bytes: int = 1 << 16) -> None:
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
