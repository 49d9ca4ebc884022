"""Programs that run once per process (the trainer's init) get their platform's compiler options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avat3r_jax import compile_options, sharding
from avat3r_jax.train import trainer
from configs import tiny


def test_one_call_programs_compile_with_the_platforms_options(monkeypatch):
    mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
    jitted = jax.jit(lambda: jnp.arange(3.0) * 2.0)
    np.testing.assert_array_equal(trainer.compiled_for_one_call(jitted, mesh)(), [0.0, 2.0, 4.0])
    monkeypatch.setitem(compile_options.ONE_CALL, "cpu", {"xla_no_such_option": True})
    with pytest.raises(Exception, match="xla_no_such_option"):
        trainer.compiled_for_one_call(jitted, mesh)


def test_the_trainers_init_is_a_one_call_program(monkeypatch):
    calls = []
    real = trainer.compiled_for_one_call
    monkeypatch.setattr(trainer, "compiled_for_one_call", lambda jitted, mesh: calls.append(mesh) or real(jitted, mesh))
    config = tiny.get_config()
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    _, _, abstract_state, _, init = trainer.build_model_state(config, mesh)
    with jax.set_mesh(mesh):
        state = init()
    assert calls == [mesh]
    assert jax.tree.map(lambda x: x.shape, state) == jax.tree.map(lambda x: x.shape, abstract_state)
