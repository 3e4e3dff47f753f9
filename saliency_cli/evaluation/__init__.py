"""`saliency evaluate`: how faithful and how well placed each method's maps
are. One module per metric family (perturb: deletion and insertion;
confidence: average drop and increase; pointing: the pointing games;
sanity: model randomisation), the task evaluators that batch them
(classifier, detector), and the loop (run), records, summary and report.

The definitions are in each module's docstring and in the README.
"""
