"""Networks: the generator and discriminator architectures (dcgan, mlp) and the config that rebuilds them.

Owns: `GeneratorConfig` (saved in every checkpoint) and the modules in `networks.py`.
May import: gan_deploy.core.
"""
