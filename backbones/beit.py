"""BEiT / Data2Vec-vision. (family file in progress)"""
