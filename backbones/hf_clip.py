"""Hugging Face CLIP vision towers. (family file in progress)"""
