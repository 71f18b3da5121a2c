"""Hugging Face DINOv3 ViT. (family file in progress)"""
