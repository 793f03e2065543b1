"""Micro-batching of search queries: concurrent requests share one forward pass of the model.

Requests put their query on a queue; one worker thread takes whatever is waiting (up to
`max_batch`), encodes those texts in one batch and answers each request's future. Under load this
turns many small forward passes into a few large ones, and the model is only ever driven from
one thread.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

from geoloc.index.search import Hit, SearchIndex

_STOP = None


class QueryBatcher:
    def __init__(self, index: SearchIndex, max_batch: int = 64):
        self.index = index
        self.max_batch = max_batch
        self._queue: queue.Queue[tuple[str, int, Future[list[Hit]]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="geoloc-query-batcher", daemon=True)
        self._thread.start()

    def submit(self, text: str, k: int) -> Future[list[Hit]]:
        """The top `k` tiles for `text`, once the worker gets to it. The query must be valid."""
        future: Future[list[Hit]] = Future()
        self._queue.put((text, k, future))
        return future

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    self._queue.put(_STOP)  # finish this batch, then stop
                    break
                batch.append(more)
            self._answer(batch)

    def _answer(self, batch: list[tuple[str, int, Future[list[Hit]]]]) -> None:
        try:
            vectors = self.index.encode([text for text, _, _ in batch])
            results = self.index.search_vectors(vectors, max(k for _, k, _ in batch))
        except Exception as error:  # noqa: BLE001 - every waiting request must hear of the failure
            for _, _, future in batch:
                future.set_exception(error)
            return
        for (_, k, future), hits in zip(batch, results, strict=True):
            future.set_result(hits[:k])
