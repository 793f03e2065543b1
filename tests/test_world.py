"""World (world.py): how a batch is shared out, and decisions the processes take together."""

from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp
from ports import free_port

from geoloc.world import World


def _any_of_worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    world = World(rank=rank, size=2)
    # Only the first process's clock says the time is up; both must stop.
    answers = [world.any_of(rank == 0), world.any_of(False), world.any_of(rank == 1)]
    Path(out, f"rank{rank}.txt").write_text(repr(answers))
    dist.barrier()
    dist.destroy_process_group()


def test_any_of_is_one_answer_for_every_process(tmp_path: Path) -> None:
    mp.spawn(_any_of_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        assert (tmp_path / f"rank{rank}.txt").read_text() == "[True, False, True]"


def test_one_process_answers_alone() -> None:
    assert World().any_of(True) is True and World().any_of(False) is False


def test_shares_of_a_batch_cover_it_once() -> None:
    batch = list(range(7))
    shares = [World(rank=r, size=3).slice_of(batch) for r in range(3)]
    assert [rows for rows, _ in shares] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [offset for _, offset in shares] == [0, 3, 5]
