"""Run by tests/test_grain.py in its own process: a streamed fit over a shuffled grain pipeline, either killed right
after a mid-epoch checkpoint (``interrupt FOLDER``: ``os._exit`` as the checkpoint of epoch 2, step 8 is written,
as a preempted job dies) or resumed from the newest checkpoint in the folder (``resume FOLDER``); prints one JSON
line with what it trained (a digest of the params, the history)."""

from __future__ import annotations

import hashlib
import json
import os
import sys

import jax
import numpy as np
import optax

import jreg

N, B, EPOCHS, CHUNK, EVERY = 120, 10, 2, 4, 4
SEED = 11


def pipeline(epoch: int):
    """Epoch ``epoch`` of the run: the embedded MNIST subset's first N images, shuffled by grain with the epoch's
    seed (grain's own epoch ``epoch`` of ``shuffle(seed=SEED)``), in batches of B."""
    import grain

    (x, y), _ = jreg.data.load_mnist_small()
    x, y = np.asarray(x[:N]), np.asarray(y[:N])
    return grain.MapDataset.source([(x[i], y[i]) for i in range(N)]).shuffle(seed=SEED + epoch).batch(B)


def run(checkpoint, resume=None):
    model = jreg.mlp([784, 8, 10])
    objective = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(1e-3))
    return jreg.fit(
        objective,
        optax.sgd(0.2),
        model.init(jax.random.key(0)),
        jreg.Stream(pipeline, chunk=CHUNK, prefetch=1),
        epochs=EPOCHS,
        batch_size=B,
        key=jax.random.key(1),
        checkpoint=checkpoint,
        resume=resume,
    )


def digest(result) -> dict:
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(result.params)]
    return {
        "params": hashlib.sha256(b"".join(leaf.tobytes() for leaf in leaves)).hexdigest(),
        "epoch_loss": [float(v) for v in result.history["epoch_loss"]],
        "global_step": int(result.snapshot.meta["global_step"]),
    }


def main() -> None:
    mode, folder = sys.argv[1], sys.argv[2]
    checkpoint = jreg.Checkpointing(folder, every_steps=EVERY, keep=10)
    if mode == "interrupt":
        from jreg.train import checkpoint_folder

        save = checkpoint_folder.Writer.save

        def save_then_die(self, state, epoch, *args, position=None, **kwargs):
            save(self, state, epoch, *args, position=position, **kwargs)
            if position is not None and (epoch, position["step"]) == (1, 8):
                sys.stdout.flush()
                os._exit(17)  # preempted: no cleanup, no lock released by hand

        checkpoint_folder.Writer.save = save_then_die
        run(checkpoint)
        raise SystemExit("the run was not interrupted")
    print(json.dumps({"digest": digest(run(checkpoint, resume="auto")), "files": sorted(os.listdir(folder))}))


if __name__ == "__main__":
    main()
