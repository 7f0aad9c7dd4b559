"""`steadylm embed`: word embeddings by Riemannian SGNS, word2vec (gensim) and SVD-SPPMI.

counts.py (words, vocabulary, co-occurrences), objective.py (the SGNS objective F and its gradient),
svd_sppmi.py, ro_sgns.py, sgns.py (the three methods), benchmarks.py (similarity and analogy sets,
offline), job.py (the run folder). docs/embed.md explains the methods and the output.
"""
