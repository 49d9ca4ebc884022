"""The PLY vertex reader (against plyfile's writer) and the expression basis (against float64 PCA facts)."""

import io

import numpy as np
import plyfile
import pytest

from data_pipelines.real import expression_basis, ply


@pytest.mark.parametrize("text,byte_order", [(False, "<"), (False, ">"), (True, "=")])
def test_ply_vertices_with_extra_properties_and_faces(text, byte_order):
    rng = np.random.default_rng(0)
    vertices = rng.normal(size=(7, 3))
    table = np.array([(*v, 0.5, 200) for v in vertices], dtype=[("x", "f8"), ("y", "f8"), ("z", "f8"), ("confidence", "f4"), ("red", "u1")])
    faces = np.array([([0, 1, 2],), ([2, 3, 4],)], dtype=[("vertex_indices", "i4", (3,))])
    buffer = io.BytesIO()
    elements = [plyfile.PlyElement.describe(table, "vertex"), plyfile.PlyElement.describe(faces, "face")]
    plyfile.PlyData(elements, text=text, byte_order=byte_order).write(buffer)
    np.testing.assert_allclose(ply.read_vertices(buffer.getvalue(), "mesh.ply"), vertices, rtol=1e-6 if text else 0)


def test_ply_errors_name_the_file():
    with pytest.raises(ValueError, match=r"m\.ply is not a PLY file"):
        ply.read_vertices(b"solid stl", "m.ply")
    header = b"ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\nend_header\n"
    with pytest.raises(ValueError, match=r"m\.ply: truncated"):
        ply.read_vertices(header + b"\0" * 20, "m.ply")


def test_basis_recovers_a_low_rank_expression_space():
    """Offsets in a 3-dimensional subspace plus noise: 3 components explain almost everything, codes
    of new offsets from that space decode back within the noise, and the components are orthonormal."""
    rng = np.random.default_rng(1)
    shapes = rng.normal(size=(3, 20, 3))
    offsets = np.einsum("ne,evk->nvk", rng.normal(size=(50, 3)), shapes) + rng.normal(0, 1e-3, (50, 20, 3))
    basis = expression_basis.fit(offsets, 4)
    np.testing.assert_allclose(basis.components @ basis.components.T, np.eye(4), atol=1e-10)
    assert basis.explained[:3].sum() > 0.999 and basis.explained[3] < 1e-5
    new = np.einsum("ne,evk->nvk", rng.normal(size=(5, 3)), shapes)
    assert np.abs(basis.decode(basis.encode(new)) - new).max() < 1e-2
    assert np.std(basis.encode(offsets)[:, 0]) == pytest.approx(1.0, rel=1e-6)  # one scale: the first component's std
    loaded = expression_basis.ExpressionBasis.load(io.BytesIO(basis.to_bytes()))
    np.testing.assert_array_equal(loaded.encode(new), basis.encode(new))
    with pytest.raises(ValueError, match="needs at least 60 training frames"):
        expression_basis.fit(offsets, 60)
