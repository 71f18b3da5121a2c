"""Swin V2. (family file in progress)"""
