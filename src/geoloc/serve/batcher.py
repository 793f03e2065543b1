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

from geoloc.index.region import Region
from geoloc.index.search import Hit, SearchIndex

_STOP = None
_Item = tuple[str, int, Region | None, Future[list[Hit]]]  # text, k, region, the answer


class QueryBatcher:
    def __init__(self, index: SearchIndex, max_batch: int = 64):
        self.index = index
        self.max_batch = max_batch
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="geoloc-query-batcher", daemon=True)
        self._thread.start()

    def submit(self, text: str, k: int, region: Region | None = None) -> Future[list[Hit]]:
        """The top `k` tiles for `text` (inside `region`), once the worker gets to it; a valid query."""
        future: Future[list[Hit]] = Future()
        self._queue.put((text, k, region, future))
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

    def _answer(self, batch: list[_Item]) -> None:
        try:
            vectors = self.index.encode([text for text, _, _, _ in batch])
            # Queries without a region share one search; each region is searched on its own.
            anywhere = [i for i, (_, _, region, _) in enumerate(batch) if region is None]
            results: dict[int, list[Hit]] = {}
            if anywhere:
                found = self.index.search_vectors(vectors[anywhere], max(batch[i][1] for i in anywhere))
                results.update(zip(anywhere, found, strict=True))
            for i, (_, k, region, _) in enumerate(batch):
                if region is not None:
                    results[i] = self.index.search_vectors(vectors[i : i + 1], k, region)[0]
        except Exception as error:  # noqa: BLE001 - every waiting request must hear of the failure
            for _, _, _, future in batch:
                future.set_exception(error)
            return
        for i, (_, k, _, future) in enumerate(batch):
            future.set_result(results[i][:k])
