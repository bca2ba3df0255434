import numpy as np
import pytest

from gan_deploy.core.latents import latents_for, latents_range


def test_image_latent_depends_only_on_seed_and_index():
    whole = latents_range(7, 0, 100, 16)
    assert np.array_equal(whole[37:41], latents_range(7, 37, 4, 16))
    assert np.array_equal(whole[[5, 90, 3]], latents_for(7, [5, 90, 3], 16))
    assert not np.array_equal(whole, latents_range(8, 0, 100, 16))


def test_latents_are_standard_normal():
    z = latents_range(0, 0, 20000, 64)
    assert z.dtype == np.float32 and z.shape == (20000, 64)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    # no correlation between dimensions or neighbouring images
    c = np.corrcoef(z[:, :8].T)
    assert np.abs(c - np.eye(8)).max() < 0.05
    assert abs(np.corrcoef(z[:-1, 0], z[1:, 0])[0, 1]) < 0.05
    assert np.isfinite(z).all()


def test_odd_latent_dim_and_bad_seed():
    assert latents_range(1, 0, 3, 7).shape == (3, 7)
    with pytest.raises(ValueError):
        latents_range(-1, 0, 3, 7)


def test_atomic_writes_get_normal_permissions(tmp_path):
    import os
    import stat

    from gan_deploy.core.fileio import atomic_write_text
    atomic_write_text(tmp_path / "a.json", "{}")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
