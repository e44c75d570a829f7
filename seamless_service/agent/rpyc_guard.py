"""rpyc cut down to what the agent needs: one method, `call(bytes) -> bytes`.

Two things rpyc does before our service code ever sees a request, and which the agent
therefore has to stop here:

* **Frames are read whole.** rpyc's Channel reads a 4-byte length and then that many
  bytes, so a 300 MB `call()` argument was buffered (and a small zlib frame inflated
  without bound) before the 1 MiB request limit could be applied. `LimitedChannel`
  (protocol/frames.py, which the agent's server reads through) checks the length in the
  header, and the inflated size, and closes the connection before reading the body of a
  frame that is too large.
* **Requests reach every rpyc handler.** `HANDLE_CMP` looks attributes up on
  `type(root)` (class-level `exposed_*` names), `HANDLE_INSPECT` lists method names and
  docstrings, and unboxing a reference to a client object (a netref) makes the agent ask
  the client about it - calling back into the client before any type check could run.
  `HardenedConnection` answers only what a client needs: the root, its `call` attribute,
  calling that, releasing references, closing. Every other handler is refused, and a
  reference to a client object is refused while unboxing, before anything is asked.
"""

from __future__ import annotations

from typing import Any

from rpyc.core import consts
from rpyc.core.protocol import Connection

REFUSED = "this agent answers only call(request: bytes)"


class HardenedConnection(Connection):
    """rpyc's Connection with every request handler refused except the few `call` needs.

    The root (the service) must have `exposed_call` and answer `_rpyc_getattr` itself.
    """

    @classmethod
    def _request_handlers(cls) -> dict:
        handlers = dict.fromkeys(super()._request_handlers(), cls._handle_refused)
        handlers.update({
            consts.HANDLE_GETROOT: cls._handle_getroot,    # the client's first request
            consts.HANDLE_INSPECT: cls._handle_inspect,    # the client builds its proxy class
            consts.HANDLE_GETATTR: cls._handle_getattr,    # root.call
            consts.HANDLE_CALL: cls._handle_call,          # root.call(request)
            consts.HANDLE_DEL: cls._handle_del,            # the client dropped a proxy
            consts.HANDLE_CLOSE: cls._handle_close,
        })
        for attribute_handler in (consts.HANDLE_SETATTR, consts.HANDLE_DELATTR, consts.HANDLE_CALLATTR):
            handlers[attribute_handler] = cls._handle_refused_attribute
        return handlers

    # Built-in exception types only: the client rebuilds those (and nothing else) from
    # rpyc's wire form; ValueError is what rpyc itself raises for refused pickling.
    def _handle_refused(self, *args: Any) -> None:
        raise ValueError(REFUSED)

    def _handle_refused_attribute(self, *args: Any) -> None:
        raise AttributeError(REFUSED)

    def _handle_inspect(self, id_pack: Any) -> tuple:
        # The client's proxy class needs no method list: every attribute goes through
        # HANDLE_GETATTR anyway. rpyc's answer would list method names and docstrings.
        return ()

    def _handle_getattr(self, obj: Any, name: Any) -> Any:
        if obj is not self._local_root:
            raise AttributeError(REFUSED)
        return super()._handle_getattr(obj, name)

    def _handle_call(self, obj: Any, args: Any, kwargs: Any = ()) -> Any:
        root = self._local_root
        if getattr(obj, "__self__", None) is not root or \
                getattr(obj, "__func__", None) is not getattr(type(root), "exposed_call", None):
            raise TypeError(REFUSED)
        return super()._handle_call(obj, args, kwargs)

    def serve_all(self) -> None:
        """rpyc's serve_all, without a poll() before every read.

        rpyc serves each message with serve(None): a Timeout object, a fresh poll object
        and a poll() system call, then the read. The agent's connection thread is the
        only reader of its connection (the agent never sends requests of its own: every
        handler that would, like unboxing a client reference, is refused), so it may
        block in the read itself. Everything else is rpyc's: the receive lock is held
        while reading and released by _dispatch, waiters on the receive event are woken
        after each message, a read that fails releases the lock (and an EOFError closes
        the connection), and the same errors end the loop. With rpyc's experimental bound
        threads, or should another thread hold the receive lock, rpyc's own serve runs.
        """
        if self._bind_threads:
            super().serve_all()
            return
        try:
            while not self.closed:
                self._serve_next()
        except OSError:  # rpyc: socket.error, select_error, IOError (all OSError now)
            if not self.closed:
                raise
        except EOFError:
            pass
        finally:
            self.close()

    def _serve_next(self) -> None:
        with self._recv_event:
            reading = self._recvlock.acquire(False)
        if not reading:
            self.serve(None)
            return
        try:
            try:
                data = self._channel.recv()
            except Exception as exc:
                self._recvlock.release()
                if isinstance(exc, EOFError):
                    self.close()  # as rpyc's serve: tells the client, then raises
                raise
            if not data:  # an empty frame: rpyc's serve skips it, and so do we
                self._recvlock.release()
                return
            self._dispatch(data)  # releases the receive lock once the message is read
        finally:
            with self._recv_event:
                self._recv_event.notify_all()

    def _unbox(self, package: Any) -> Any:
        # A client object arrives as a reference; rpyc would ask the client about its class
        # (HANDLE_INSPECT back to the client) right here, before call() could refuse it.
        label = package[0] if type(package) is tuple and package else None
        if label == consts.LABEL_REMOTE_REF:
            raise TypeError("call() takes one msgpack request as bytes, not a reference to a client object")
        return super()._unbox(package)
