"""The shard reader: DDP step contract, at-most-once epochs, endless OE, safe decoding."""
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from edge_ray.data import (eval_loader, eval_transform, load_index, read_labels, steps_per_epoch,
                           train_loader, train_transform)
from edge_ray.data import plan

C = 5


def labels_of(i: int) -> list[int]:
    return sorted({i % C, (3 * i + 1) % C})


def key_of(i: int) -> str:
    return f"s{i:04d}"


def png(i: int, size: int = 8) -> bytes:
    img = Image.new("RGB", (size, size), color=(i % 256, (7 * i) % 256, 100))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_set(root: Path, name: str, role: str, sizes, *, start: int = 0, extra=None) -> Path:
    """Shards of 8x8 PNGs; sample i has key s000i and labels labels_of(i) (empty unless role id)."""
    out = root / name
    out.mkdir(parents=True)
    shards, rows, i = [], [], start
    for s, n in enumerate(sizes):
        url = f"{name}-{s:06d}.tar"
        with tarfile.open(out / url, "w") as tar:
            for _ in range(n):
                labels = labels_of(i) if role == "id" else []
                _add(tar, f"{key_of(i)}.png", png(i))
                _add(tar, f"{key_of(i)}.json", json.dumps({"labels": labels}).encode())
                for ext, data in (extra or {}).get(i, {}).items():
                    _add(tar, f"{key_of(i)}.{ext}", data)
                rows.append((key_of(i), labels, url))
                i += 1
        shards.append({"url": url, "num_samples": n})
    classes = [f"c{c}" for c in range(C)] if role == "id" else []
    (out / "index.json").write_text(json.dumps({
        "name": name, "role": role, "classes": classes, "num_samples": sum(sizes),
        "shards": shards, "label_counts": [0] * len(classes), "skipped": {}}))
    pq.write_table(pa.table({"key": [r[0] for r in rows], "labels": [r[1] for r in rows],
                             "shard": [r[2] for r in rows]}), out / "labels.parquet")
    return out


@pytest.fixture()
def sets(tmp_path):
    id_dir = make_set(tmp_path, "toy", "id", [17, 17, 17])
    oe_dir = make_set(tmp_path, "oe", "oe", [5], start=1000)
    return load_index(id_dir, role="id"), load_index(oe_dir, role="oe")


def run_epoch(id_index, oe_index, *, rank, world_size=2, num_workers=2, epoch=0, seed=0,
              batch_size=4, oe_batch_size=3):
    loader = train_loader(id_index, oe_index, batch_size=batch_size, oe_batch_size=oe_batch_size,
                          image_size=8, epoch=epoch, seed=seed, rank=rank, world_size=world_size,
                          num_workers=num_workers, return_keys=True)
    batches = list(loader)
    assert len(batches) == len(loader)
    return batches


def keys_of(batches) -> list[str]:
    return [k for b in batches for k in b[3]]


def test_two_ranks_two_workers_equal_steps_and_at_most_once(sets):
    id_index, oe_index = sets
    steps = steps_per_epoch(51, 4, 2)
    assert steps == 6
    per_rank = [run_epoch(id_index, oe_index, rank=r) for r in (0, 1)]
    assert [len(b) for b in per_rank] == [steps, steps]
    keys = keys_of(per_rank[0]) + keys_of(per_rank[1])
    assert len(keys) == 2 * steps * 4 and len(set(keys)) == len(keys)
    for x_id, y_id, x_oe, batch_keys in per_rank[0] + per_rank[1]:
        assert x_id.shape == (4, 3, 8, 8) and x_id.dtype == torch.float32
        assert x_oe.shape == (3, 3, 8, 8)  # OE set holds 5 < 6 steps * 3: still every step
        assert y_id.shape == (4, C) and y_id.dtype == torch.float32
        for row, key in zip(y_id, batch_keys):
            assert torch.nonzero(row).flatten().tolist() == labels_of(int(key[1:]))


def test_epoch_order_changes_and_seed_reproduces(sets):
    id_index, oe_index = sets
    first = run_epoch(id_index, oe_index, rank=0, epoch=0)
    again = run_epoch(id_index, oe_index, rank=0, epoch=0)
    second = run_epoch(id_index, oe_index, rank=0, epoch=1)
    assert keys_of(first) == keys_of(again)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) for a, b in zip(first, again))
    assert keys_of(first) != keys_of(second)
    assert keys_of(run_epoch(id_index, oe_index, rank=0, seed=1)) != keys_of(first)


def test_one_shard_two_ranks_is_balanced(tmp_path):
    id_index = load_index(make_set(tmp_path, "one", "id", [20]))
    oe_index = load_index(make_set(tmp_path, "oe", "oe", [2], start=500))
    per_rank = [run_epoch(id_index, oe_index, rank=r, batch_size=3) for r in (0, 1)]
    assert [len(b) for b in per_rank] == [3, 3]
    keys = keys_of(per_rank[0]) + keys_of(per_rank[1])
    assert len(set(keys)) == len(keys) == 18


def test_in_process_loader_and_set_epoch(sets):
    id_index, oe_index = sets
    loader = train_loader(id_index, oe_index, batch_size=8, oe_batch_size=2, image_size=6,
                          epoch=0, seed=3, rank=0, world_size=1, num_workers=0)
    assert len(loader) == 6
    first = [b[0] for b in loader]
    loader.set_epoch(1)
    second = [b[0] for b in loader]
    assert len(first) == len(second) == 6 and first[0].shape == (8, 3, 6, 6)
    assert not all(torch.equal(a, b) for a, b in zip(first, second))


def test_started_loader_gives_the_same_epoch(sets):
    """`start()` (the trainer's overlap of epoch e+1's worker start-up with epoch e) must
    not change what an epoch yields; `set_epoch` after `start()` drops the early workers."""
    id_index, oe_index = sets

    def loader(epoch):
        return train_loader(id_index, oe_index, batch_size=4, oe_batch_size=3, image_size=8, epoch=epoch,
                            seed=0, rank=0, world_size=1, num_workers=2, return_keys=True)
    plain = list(loader(1))
    early = loader(1).start()
    assert early.start() is early
    started = list(early)
    assert keys_of(started) == keys_of(plain)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) for a, b in zip(started, plain))
    assert keys_of(early) == keys_of(plain)  # a second pass starts fresh workers
    moved = loader(0).start()
    moved.set_epoch(1)
    assert keys_of(moved) == keys_of(plain)


def test_without_oe_yields_none(sets):
    id_index, _ = sets
    loader = train_loader(id_index, None, batch_size=16, oe_batch_size=16, image_size=8,
                          epoch=0, seed=0, rank=1, world_size=2, num_workers=2)
    batches = list(loader)
    assert len(batches) == len(loader) == 1 and batches[0][2] is None


@pytest.mark.parametrize("n,sizes,batch,world,workers", [
    (51, [17, 17, 17], 4, 2, 2), (20, [20], 3, 2, 2), (60, [7] * 8 + [4], 8, 1, 2),
    (100, [30, 30, 40], 5, 3, 4), (9, [9], 1, 3, 5), (1000, [1] * 1000, 7, 4, 3)])
def test_plan_partitions_exactly(n, sizes, batch, world, workers):
    steps = steps_per_epoch(n, batch, world)
    for epoch in range(3):
        perm, offset = plan.epoch_order(len(sizes), n, seed=0, epoch=epoch)
        seen = []
        for rank in range(world):
            quotas = [plan.worker_quota(steps, w, workers) for w in range(workers)]
            assert sum(quotas) == steps
            for w in range(workers):
                pos = plan.train_positions(n, steps, batch, offset, rank, w, workers)
                assert len(pos) == quotas[w] * batch
                runs = list(plan.group_by_shard(pos, [sizes[i] for i in perm]))
                assert sum(len(local) for _, local in runs) == len(pos)
                seen += pos.tolist()
        assert len(seen) == len(set(seen)) == steps * batch * world


@pytest.mark.parametrize("n,total,world,workers", [(51, 7, 2, 2), (100, 21, 2, 3), (100, 21, 3, 1), (60, 10, 4, 2)])
def test_uneven_rank_batches_partition_exactly(n, total, world, workers):
    """A global batch the world size does not divide: ranks' batches differ by one, each
    rank reads steps x its batch, all of them disjoint, steps = n // the global batch."""
    from edge_ray.config import split_batch

    sizes = split_batch(total, world)
    assert sum(sizes) == total and max(sizes) - min(sizes) <= 1
    steps = steps_per_epoch(n, total, 1)
    for epoch in range(2):
        _, offset = plan.epoch_order(3, n, seed=0, epoch=epoch)
        seen = []
        for rank in range(world):
            pos = [plan.train_positions(n, steps, sizes[rank], offset, rank, w, workers, sizes)
                   for w in range(workers)]
            assert sum(len(p) for p in pos) == steps * sizes[rank]
            seen += [int(x) for p in pos for x in p]
        assert len(seen) == len(set(seen)) == steps * total


def test_uneven_loaders_cover_every_planned_sample_once(sets):
    id_index, oe_index = sets
    sizes = [4, 3]  # a global batch of 7 over 2 ranks: 51 // 7 = 7 steps on each
    per_rank = [list(train_loader(id_index, oe_index, batch_size=sizes[r], rank_batches=sizes, oe_batch_size=2,
                                  image_size=8, epoch=0, seed=0, rank=r, world_size=2, num_workers=2,
                                  return_keys=True)) for r in (0, 1)]
    assert [len(b) for b in per_rank] == [7, 7]
    assert [{b[0].shape[0] for b in batches} for batches in per_rank] == [{4}, {3}]
    keys = keys_of(per_rank[0]) + keys_of(per_rank[1])
    assert len(keys) == len(set(keys)) == 7 * 7
    with pytest.raises(ValueError, match="rank_batches"):
        train_loader(id_index, oe_index, batch_size=4, rank_batches=[3, 4], oe_batch_size=2, image_size=8,
                     epoch=0, seed=0, rank=0, world_size=2, num_workers=0)


def test_eval_every_sample_once_in_order(sets):
    id_index, oe_index = sets
    outputs = []
    for rank in (0, 1):
        loader = eval_loader(id_index, batch_size=4, image_size=8, rank=rank, world_size=2,
                             num_workers=2)
        batches = list(loader)
        assert len(batches) == len(loader)
        outputs += batches
    keys = [k for b in outputs for k in b[2]]
    assert keys == [key_of(i) for i in range(51)]
    y = torch.cat([b[1] for b in outputs])
    _, expected = read_labels(id_index)
    assert torch.equal(y, torch.from_numpy(expected))
    x_oe, y_oe, k_oe = next(iter(eval_loader(oe_index, batch_size=8, image_size=8)))
    assert x_oe.shape == (5, 3, 8, 8) and y_oe.shape == (5, 0) and len(k_oe) == 5


def test_eval_is_deterministic(sets):
    id_index, _ = sets
    loader = eval_loader(id_index, batch_size=16, image_size=12, num_workers=2)
    first, second = list(loader), list(loader)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, second))


def test_read_labels_matches_json(sets):
    id_index, _ = sets
    keys, y = read_labels(id_index)
    assert keys == [key_of(i) for i in range(51)] and y.dtype == np.float32
    assert [np.flatnonzero(row).tolist() for row in y] == [labels_of(i) for i in range(51)]


@pytest.mark.parametrize("ext,message", [("pyd", "refusing to unpickle"),
                                         ("pth", "refusing to unpickle"),
                                         ("txt", "unexpected member")])
def test_untrusted_members_are_refused(tmp_path, ext, message):
    index = load_index(make_set(tmp_path, "bad", "ood", [4], extra={2: {ext: b"\x80\x04K\x01."}}))
    with pytest.raises(ValueError, match=message) as err:
        list(eval_loader(index, batch_size=2, image_size=8))
    assert "s0002" in str(err.value) and "bad-000000.tar" in str(err.value)


def test_index_errors(tmp_path, sets):
    with pytest.raises(FileNotFoundError, match="launch.py shards"):
        load_index(tmp_path / "nope")
    id_index, oe_index = sets
    with pytest.raises(ValueError, match="has role 'id' but an 'ood' set was expected"):
        load_index(id_index.dir, role="ood")
    with pytest.raises(ValueError, match="role 'oe' but an 'id'"):
        train_loader(oe_index, oe_index, batch_size=1, oe_batch_size=1, image_size=8, epoch=0,
                     seed=0, rank=0, world_size=1, num_workers=0)
    empty = make_set(tmp_path, "empty", "ood", [])
    with pytest.raises(ValueError, match="empty set"):
        load_index(empty)
    (tmp_path / "oe" / "oe-000000.tar").unlink()
    with pytest.raises(FileNotFoundError, match="oe-000000.tar"):
        load_index(tmp_path / "oe")
    (tmp_path / "empty" / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_index(tmp_path / "empty")


def test_too_few_samples_for_a_batch():
    with pytest.raises(ValueError, match="reduce the batch size"):
        steps_per_epoch(10, 8, 2)


def test_index_that_overstates_a_shard_fails_loudly(tmp_path, sets):
    _, oe_index = sets
    out = make_set(tmp_path, "liar", "id", [10, 10])
    meta = json.loads((out / "index.json").read_text())
    meta["shards"][1]["num_samples"], meta["num_samples"] = 14, 24
    (out / "index.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="holds 10 samples"):
        list(train_loader(load_index(out), oe_index, batch_size=4, oe_batch_size=1, image_size=8,
                          epoch=0, seed=0, rank=0, world_size=1, num_workers=0))


def test_transforms():
    img = Image.new("L", (40, 30), color=77)
    t = train_transform(16, crop_scale=(0.3, 1.0))
    a = t(img, np.random.default_rng(5))
    assert a.shape == (3, 16, 16)
    assert torch.equal(a, t(img, np.random.default_rng(5)))
    e = eval_transform(16)
    assert torch.equal(e(img), e(img)) and e(img).shape == (3, 16, 16)
    for width, height in [(1, 100), (100, 1), (5, 5)]:
        top, left, h, w, _ = t.sample_crop(width, height, np.random.default_rng(0))
        assert 0 <= top <= height - h and 0 <= left <= width - w and h > 0 and w > 0


def test_batched_normalise_equals_per_image_transform():
    from edge_ray.data.transforms import to_normalized_batch

    images = [Image.new("RGB", (20, 20), color=(i, 2 * i, 3 * i)) for i in range(4)]
    e = eval_transform(10, mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7))
    batch = to_normalized_batch([e.geometric(im) for im in images], e.mean, e.std)
    assert batch.is_contiguous(memory_format=torch.channels_last)  # as the loaders' batches
    assert torch.equal(batch, torch.stack([e(im) for im in images]))


def test_jpeg_and_palette_images_decode_to_rgb():
    from edge_ray.data.transforms import decode_image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), color=(200, 10, 10)).save(buf, format="JPEG")
    small = decode_image(buf.getvalue(), min_size=16)
    assert small.mode == "RGB" and small.size == (32, 24)  # decoded at 1/2 scale
    buf = io.BytesIO()
    Image.new("P", (4, 4)).save(buf, format="PNG", transparency=0)
    assert decode_image(buf.getvalue()).mode == "RGB"


@pytest.mark.parametrize("source, size, crop", [((256, 256), 256, (0.5, 1.0)), ((640, 480), 224, (0.08, 1.0)),
                                                 ((64, 48), 32, (0.8, 1.0))])
def test_uint8_worker_path_equals_the_pil_path(source, size, crop):
    """The workers' uint8 crops (torch's port of PIL's antialiased bilinear), normalised in the
    main process, against the former path (PIL resize, float normalise in the worker) on the
    same records and seeds: the same crops, pixels equal or 1 level apart (shrinking only),
    channels-last memory."""
    import io

    from edge_ray.data.streams import decode_batch
    from edge_ray.data.records import Record
    from edge_ray.data.transforms import decode_image, normalize_batch, to_normalized_batch

    gen = np.random.default_rng(3)
    recs = []
    for i in range(6):
        pixels = (gen.random((source[1], source[0], 3)) * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG" if i % 2 else "PNG")
        recs.append(Record(key=f"k{i}", ext="jpg" if i % 2 else "png", data=buf.getvalue(), labels=(), shard="mem"))
    t = train_transform(size, crop_scale=crop)
    raw = decode_batch(recs, t, np.random.default_rng(11))
    assert raw.dtype == torch.uint8 and raw.shape == (6, 3, size, size)
    assert raw.is_contiguous(memory_format=torch.channels_last)
    new = normalize_batch(raw, t.mean, t.std)
    gen_old = np.random.default_rng(11)
    old = to_normalized_batch([t.geometric(decode_image(r.data, min_size=t.min_decode_size), gen_old) for r in recs],
                              t.mean, t.std)
    levels = ((new - old) * torch.tensor(t.std).view(1, 3, 1, 1) * 255).abs()
    assert levels.max() <= 1.0 + 1e-4
    assert (levels < 1e-3).float().mean() > 0.7  # most pixels identical


def test_crop_uint8_equals_torchvision_resized_crop():
    """`crop_uint8` calls torch's antialiased resize directly (torchvision's dispatch cost as
    much as decoding a 32 px PNG): on random images, boxes and sizes, enlarging and
    shrinking, its pixels equal torchvision v2's `resized_crop` exactly, flip included."""
    from torchvision.transforms.v2 import functional as F2

    from edge_ray.data.transforms import crop_uint8

    gen = np.random.default_rng(7)
    for _ in range(300):
        height, width = (int(v) for v in gen.integers(4, 200, size=2))
        img = Image.fromarray(gen.integers(0, 256, (height, width, 3), dtype=np.uint8))
        h, w = int(gen.integers(1, height + 1)), int(gen.integers(1, width + 1))
        top, left = int(gen.integers(0, height - h + 1)), int(gen.integers(0, width - w + 1))
        size, flip = int(gen.choice([8, 32, 57, 224])), bool(gen.random() < 0.5)
        x = torch.from_numpy(np.array(img)).permute(2, 0, 1)
        want = F2.resized_crop(x, top, left, h, w, [size, size], antialias=True)
        want = want.flip(-1) if flip else want
        got = crop_uint8(img, (top, left, h, w), flip, size)
        assert got.dtype == torch.uint8 and got.shape == (3, size, size)
        assert torch.equal(got, want), (height, width, top, left, h, w, size)


def test_the_train_worker_does_not_import_torchvision():
    """Every Ray Train worker imports the worker module; torchvision (and the torch._dynamo
    it pulls in) cost ~2 s of that per run start and is needed only for torchvision
    backbones and the PIL reference transforms, which import it where they use it."""
    import subprocess
    import sys

    code = ("import sys, edge_ray.train.ray_worker, edge_ray.evaluate.pipeline, edge_ray.oe.rank\n"
            "from edge_ray.models.networks import build_model\n"
            "build_model('smallcnn', 3)\n"
            "print(sorted(m for m in ('torchvision', 'torch._dynamo') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    out = subprocess.run([sys.executable, "-c", "import sys\nfrom edge_ray.models.networks import build_model\n"
                          "build_model('resnet50', 3)\nprint('torchvision' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


@pytest.mark.parametrize("channels_last", [True, False])
def test_normalize_batch_matches_a_float64_reference(channels_last):
    """The CPU path (numpy, one thread) against (x / 255 - mean) / std in float64 on random
    uint8 batches, in either memory layout, and the same float32 values as torch's ops."""
    from edge_ray.data.transforms import normalize_batch

    gen = np.random.default_rng(5)
    x = torch.from_numpy(gen.integers(0, 256, (5, 16, 12, 3), dtype=np.uint8)).permute(0, 3, 1, 2)
    if not channels_last:
        x = x.contiguous()
    mean, std = (0.3, 0.5, 0.7), (0.2, 0.25, 0.3)
    out = normalize_batch(x, mean, std)
    assert out.dtype == torch.float32 and out.shape == x.shape and out.stride() == x.stride()
    ref = (x.numpy().astype(np.float64) / 255 - np.array(mean).reshape(1, 3, 1, 1)) / np.array(std).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=2e-6)
    m = torch.tensor([255.0 * v for v in mean]).view(1, 3, 1, 1)
    s = torch.tensor([255.0 * v for v in std]).view(1, 3, 1, 1)
    assert torch.equal(out, x.to(torch.float32).sub_(m).div_(s))


def test_eval_cache_replays_a_set_without_reading_it_again(sets, tmp_path):
    """EvalCache gives eval_loader's exact batches; a set read to the end is replayed from
    memory (its tars can go), a pass stopped early keeps nothing, and a set whose pixels
    exceed the budget streams every time (a damaged tar then shows)."""
    import shutil

    from edge_ray.data import EvalCache

    id_index, _ = sets
    src = Path(id_index.dir)
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    index = load_index(copy, role="id")
    kw = dict(batch_size=5, image_size=6, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    want = list(eval_loader(index, **kw))

    def same(got):
        assert len(got) == len(want)
        for (x, y, k), (xw, yw, kw_) in zip(got, want):
            assert torch.equal(x, xw) and torch.equal(y, yw) and k == kw_
            assert x.is_contiguous(memory_format=torch.channels_last)

    cache = EvalCache()
    first = cache.loader(index, **kw)
    next(first)  # stopped after one batch: nothing kept
    assert cache.used == 0
    same(list(cache.loader(index, **kw)))
    assert cache.used == 51 * 3 * 6 * 6
    for tar in copy.glob("*.tar"):
        tar.write_bytes(b"gone")
    same(list(cache.loader(index, **kw)))
    same(list(cache.loader(index, **kw)))

    small = EvalCache(max_bytes=51 * 3 * 6 * 6 - 1)
    fresh = load_index(src, role="id")
    same(list(small.loader(fresh, **kw)))
    assert small.used == 0
    with pytest.raises(ValueError, match="damaged"):
        list(small.loader(index, **kw))


def test_decoded_cache_gives_the_same_batches_and_skips_decoding(sets, monkeypatch):
    """train_loader(decoded_cache_mb=...) in-process: two epochs give bit-identical batches
    (images, labels, OE, keys) to the uncached loader; the second epoch decodes only the ID
    images the first did not read, and a budget of 10 images keeps 10 and decodes the rest."""
    from edge_ray.data import caches, streams

    id_index, oe_index = sets
    decoded = []
    real = streams.decode_image
    monkeypatch.setattr(streams, "decode_image", lambda data, **kw: decoded.append(1) or real(data, **kw))

    def epoch(e, mb):
        return list(train_loader(id_index, oe_index, batch_size=4, oe_batch_size=3, image_size=6, epoch=e,
                                 seed=3, rank=0, world_size=1, num_workers=0, crop_scale=(0.3, 1.0),
                                 return_keys=True, decoded_cache_mb=mb))

    def same(a, b):
        assert len(a) == len(b) == 12
        for (x, y, o, k), (x2, y2, o2, k2) in zip(a, b):
            assert torch.equal(x, x2) and torch.equal(y, y2) and torch.equal(o, o2) and k == k2

    def ids(batches):
        return {k for b in batches for k in b[3]}

    caches.DECODED.clear()
    plain = [epoch(e, 0) for e in (0, 1)]
    assert caches.DECODED.used == 0
    decoded.clear()
    first = epoch(0, 1)
    assert len(caches.DECODED._images) == 48 + 5  # the epoch's 12 x 4 ID images and the 5 OE images
    assert caches.DECODED.used == 53 * 8 * 8 * 3
    before = len(decoded)
    second = epoch(1, 1)
    assert len(decoded) - before == len(ids(second) - ids(first)) > 0
    same(first, plain[0])
    same(second, plain[1])

    # Once every image of a shard's wanted records is cached, the shard is not read again:
    # the records' metadata comes from the cache, and the batches stay the uncached ones.
    reads = []
    real_read = streams.read_shard
    monkeypatch.setattr(streams, "read_shard", lambda url, *a, **kw: reads.append(url) or real_read(url, *a, **kw))
    for e in (2, 3):
        reads.clear()
        cached = epoch(e, 1)
        assert reads == []  # epochs 0 and 1 read (and cached) every ID and OE image
        same(cached, epoch(e, 0))
        assert len(reads) > 0  # the uncached loader reads the shards

    caches.DECODED.clear()
    same(epoch(0, 10 * 8 * 8 * 3 / 2 ** 20), plain[0])  # room for 10 decoded 8x8 images
    assert len(caches.DECODED._images) == 10
    caches.DECODED.clear()
