"""Data sources: the built-in digits, image folders, .npy/.npz arrays and MNIST IDX files, as float images.

May import: gan_deploy.core. Used by training and by the quality score's reference images.
"""
