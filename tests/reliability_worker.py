"""Run by tests/test_reliability.py in fresh processes: train, save, resume, or get killed mid-save.

python reliability_worker.py straight OUT            # 10 epochs, params saved to OUT
python reliability_worker.py first CKPT_DIR          # 5 of 10 epochs, checkpointing
python reliability_worker.py second CKPT_DIR OUT     # resume from CKPT_DIR to 10 epochs, params to OUT
python reliability_worker.py slow-save PATH          # save step 1, then step 2 with a write that stalls
python reliability_worker.py auto CKPT_DIR OUT       # 10 epochs, resume="auto" (re-run after kill -9), params to OUT
"""

from __future__ import annotations

import sys
import time

import jax
import optax

import jreg


def setup():
    (x, y), _ = jreg.data.load_mnist_small()
    model = jreg.mlp([784, 30, 10])
    obj = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(0.1 / 1000))
    return obj, optax.adam(1e-2), model.init(jax.random.key(0)), (x[:500], y[:500])


def main() -> None:
    mode, target = sys.argv[1], sys.argv[2]
    obj, opt, params, train = setup()
    common = dict(batch_size=10, key=jax.random.key(7))
    if mode == "straight":
        jreg.save(target, jreg.fit(obj, opt, params, train, epochs=10, **common).params)
    elif mode == "first":
        jreg.fit(obj, opt, params, train, epochs=5, checkpoint=jreg.Checkpointing(target), **common)
    elif mode == "second":
        result = jreg.fit(obj, opt, params, train, epochs=10, resume=target, **common)
        assert len(result.history) == 10, len(result.history)
        jreg.save(sys.argv[3], result.params)
    elif mode == "auto":  # one unchanged command, re-run after a kill: resumes when the folder holds checkpoints

        def announce(epoch, metrics):
            print(f"EPOCH {epoch + 1}", flush=True)

        ckpt = jreg.Checkpointing(target, every=1)
        result = jreg.fit(obj, opt, params, train, epochs=10, checkpoint=ckpt, resume="auto", callback=announce,
                          **common)  # fmt: skip
        assert len(result.history) == 10, len(result.history)
        jreg.save(sys.argv[3], result.params)
    elif mode == "slow-save":
        jreg.save(target, params, step=1)

        def stalling_write_bytes(path, data):
            def write(f):
                f.write(data[: len(data) // 2])
                f.flush()
                print("WRITING", flush=True)
                time.sleep(120)  # killed here
                f.write(data[len(data) // 2 :])

            return jreg.io.atomic_write(path, write)

        jreg.io.write_bytes = stalling_write_bytes
        jreg.save(target, params, step=2)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
