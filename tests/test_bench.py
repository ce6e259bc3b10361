"""The benchmark's timing order (the timings themselves need a GPU)."""

from fused_swiglu.bench import interleaved_samples


def test_interleaved_rounds_time_every_fn_once_each_in_changing_orders():
    order = []

    def timer(fn):
        order.append(fn())
        return float(len(order))

    names = "abcde"
    fns = {name: (lambda name=name: name) for name in names}
    samples = interleaved_samples(timer, fns, rounds=6)
    rounds = [order[i:i + len(names)] for i in range(0, len(order), len(names))]
    assert len(rounds) == 6 and all(sorted(r) == list(names) for r in rounds)
    # not one fixed order: both who goes first and who follows whom change between rounds
    assert len({r[0] for r in rounds}) > 1
    assert len({tuple(r) for r in rounds}) > 1
    # each sample is the timer's answer for that fn in that round
    for name in names:
        assert samples[name] == [float(i * len(names) + r.index(name) + 1)
                                 for i, r in enumerate(rounds)]
    # the same orders in every run, so two runs time the same sequence
    order.clear()
    interleaved_samples(timer, fns, rounds=6)
    assert [order[i:i + len(names)] for i in range(0, len(order), len(names))] == rounds
