"""Hugging Face SigLIP / SigLIP2 vision towers. (family file in progress)"""
