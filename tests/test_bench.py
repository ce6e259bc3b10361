"""The benchmark's timing order (the timings themselves need a GPU)."""

from fused_swiglu.bench import interleaved_samples


def test_interleaved_rounds_rotate_the_order():
    order = []

    def timer(fn):
        order.append(fn())
        return float(len(order))

    fns = {name: (lambda name=name: name) for name in "abc"}
    samples = interleaved_samples(timer, fns, rounds=4)
    assert order == list("abc" "bca" "cab" "abc")
    # each name gets one sample per round, in the round it was timed
    assert samples == {"a": [1.0, 6.0, 8.0, 10.0], "b": [2.0, 4.0, 9.0, 11.0],
                       "c": [3.0, 5.0, 7.0, 12.0]}
