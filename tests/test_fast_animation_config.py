"""configs/paper_fast_animation.py: the paper config with a cached prefix of 7 blocks, nothing else changed."""

from avat3r_jax.config_validation import config_problems
from configs import paper, paper_fast_animation


def test_fast_animation_config_caches_seven_blocks_and_is_otherwise_the_papers():
    fast, base = paper_fast_animation.get_config(), paper.get_config()
    assert config_problems(fast) == []
    assert fast.model.cross_attn_from_layer == 7 < fast.model.depth
    with base.unlocked():
        base.model.cross_attn_from_layer = 7
    assert fast.to_dict() == base.to_dict()
