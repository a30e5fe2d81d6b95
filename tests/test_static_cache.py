"""The static KV cache: one preallocated cache per decode, written in place, never reallocated or copied when
rows finish a block; cached forwards that keep their shapes within a block; the host-sync counter."""
import pytest
import torch

from harness.decoding import DecodeConfig, generate
from harness.models import KVCache, load_model
from harness.models.metered import Metered
from harness.syncs import count_host_syncs

from .conftest import FIXTURE, assert_batch_decodes_like_its_rows
from .test_dream import FIXTURE as DREAM
from .test_llada2 import FIXTURE2 as LLADA2, IDS

G, B = 32, 8


def cfg(**kw):
    return DecodeConfig.create(**{"gen_length": G, "block_length": B, **kw})


class CacheWatcher(Metered):
    """Records, for every cached forward: the cache object, its buffers' storage, and the shapes fed."""

    def __init__(self, model):
        super().__init__(model)
        self.forwards = []

    def forward(self, input_ids, attention_mask=None, *, start=0, cache=None, position_ids=None):
        logits = super().forward(input_ids, attention_mask, start=start, cache=cache, position_ids=position_ids)
        if cache is not None:
            buffers = cache.key_buffers + cache.value_buffers
            buffers += [] if cache.input_buffer is None else [cache.input_buffer]
            self.forwards.append(dict(
                cache=id(cache), storage=[b.data_ptr() for b in buffers], buffer_shape=buffers[0].shape,
                start=start, shapes=[None if t is None else t.shape for t in (input_ids, attention_mask, position_ids)]))
        return logits


@pytest.fixture(scope="module")
def models():
    blocky = load_model(FIXTURE)
    blocky.block_diffusion = True  # under a block-causal mask: the engine's block diffusion on the LLaDA fixture
    return dict(llada=load_model(FIXTURE), dream=load_model(DREAM), llada2=load_model(LLADA2, **IDS),
                blocky=blocky)


def ragged_batch(model, lengths=(10, 6, 8), seed=2):
    """Left-padded prompts of different lengths (rows that finish blocks at different steps)."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), model.eos_token_id)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, width - n:], mask[i, width - n:] = torch.randint(0, 250, (n,), generator=gen), 1
    return ids, mask


CELLS = [("llada", "prefix"), ("llada", "dual"), ("dream", "prefix"), ("dream", "dual"), ("llada2", "prefix"),
         ("blocky", "prefix")]


@pytest.mark.parametrize("family, cache", CELLS)
def test_one_cache_per_decode_allocated_once_and_static_within_a_block(models, family, cache):
    """A ragged batch whose rows leave blocks at different steps: one cache object for the whole decode, its
    buffers sized for the whole canvas at the first forward and never reallocated (same storage at every
    forward), and a block's steps feed the same shapes (ids, mask, positions) while rows finish."""
    model = CacheWatcher(models[family])
    # block diffusion: lengths of one residue mod B, so that the rows share one decode
    ids, mask = ragged_batch(model, lengths=(11, 11 + B, 11 + 2 * B) if model.block_diffusion else (10, 6, 8))
    out = generate(model, ids, cfg(strategy="threshold", threshold=0.05, cache=cache), attention_mask=mask)
    forwards = model.forwards
    assert len(forwards) == int(out.steps_per_block.amax(0).clamp(min=0).sum())  # the batch's forwards
    assert len({f["cache"] for f in forwards}) == 1
    assert all(f["storage"] == forwards[0]["storage"] for f in forwards)
    canvas = ids.shape[1] + G if not model.block_diffusion else -(-(ids.shape[1] + G) // B) * B
    assert forwards[0]["buffer_shape"][0] == ids.shape[0] and forwards[0]["buffer_shape"][2] == canvas
    steps_of = {}  # a block's steps after its refresh: the same positions fed (block diffusion's refresh feeds two blocks)
    for f in forwards:
        steps_of.setdefault((f["start"], f["shapes"][0][1]), set()).add(tuple(f["shapes"]))
    in_block = [shapes for (start, _), shapes in steps_of.items() if start > 0]
    assert in_block and all(len(shapes) == 1 for shapes in in_block)
    steps = out.steps_per_block.clamp(min=0)
    assert (steps != steps[:1]).any(), "the rows should finish blocks at different steps"


@pytest.mark.parametrize("family, cache", [("llada", "dual"), ("dream", "dual"), ("blocky", "prefix")])
def test_rows_finishing_a_block_early_decode_like_their_rows(models, family, cache):
    """Finished rows stay in the batch until the block ends, their outputs dropped: each row's tokens,
    forwards and re-masks are its own decode's."""
    assert_batch_decodes_like_its_rows(models[family], cfg(strategy="threshold", threshold=0.05, cache=cache))


def test_a_refill_for_fewer_rows_reuses_the_buffers(models):
    """A fill (a forward from position 0) writes the first rows of the buffers: nothing is reallocated, and
    the logits are those of a cache made for those rows."""
    model, ids = models["llada"], torch.randint(0, 250, (3, 24), generator=torch.Generator().manual_seed(0))
    cache = KVCache(batch=3, capacity=24)
    model(ids, cache=cache)
    storage = [k.data_ptr() for k in cache.key_buffers]
    model(ids[1:], cache=cache)
    assert [k.data_ptr() for k in cache.key_buffers] == storage and cache.keys[0].shape[0] == 2
    fresh = KVCache()
    model(ids[1:], cache=fresh)
    torch.testing.assert_close(model(ids[1:, 16:], start=16, cache=cache), model(ids[1:, 16:], start=16, cache=fresh),
                               atol=0, rtol=0)


def test_cache_errors_are_one_line(models):
    model, ids = models["llada"], torch.randint(0, 250, (2, 16), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="overflows the KV cache's capacity 12"):
        model(ids, cache=KVCache(capacity=12))
    cache = KVCache()
    with pytest.raises(ValueError, match="filled by a forward starting at position 0"):
        model(ids[:, 8:], start=8, cache=cache)
    model(ids, cache=cache)
    with pytest.raises(ValueError, match="a forward of 1 rows on a KV cache filled for 2"):
        model(ids[:1, 8:], start=8, cache=cache)


def test_sync_counter_counts_and_restores_torch():
    x = torch.arange(6.0)
    before = dict(vars(torch.Tensor))
    with count_host_syncs() as syncs:
        x.sum().item()
        x.tolist()
        bool(x[0] > 1)
        int(x[2])
        x[x > 2]  # a data-dependent shape
        x[x > 4] = 0
        x[1:3] = 1  # no boolean index: no sync
        x.nonzero()
        torch.nonzero(x)
    assert syncs.counts == {"item": 1, "tolist": 1, "__bool__": 1, "__int__": 1, "x[bool]": 1, "x[bool] = v": 1,
                            "nonzero": 2}
    assert syncs.total == 8 and dict(vars(torch.Tensor)) == before


@pytest.mark.parametrize("cache", ["none", "dual"])
def test_the_engine_syncs_once_per_step(models, cache):
    """Baseline decoding reads one device value per step (which rows still decode: the loop's end test), plus a
    few per block (the end test that ends it, the finiteness check) and per decode."""
    ids = torch.randint(0, 250, (2, 10), generator=torch.Generator().manual_seed(0))
    with count_host_syncs() as syncs:
        out = generate(models["llada"], ids, cfg(cache=cache))
    steps, blocks = int(out.steps_per_block.amax(0).sum()), G // B
    assert steps == G and syncs.total <= steps + 2 * blocks + 4, syncs.counts
