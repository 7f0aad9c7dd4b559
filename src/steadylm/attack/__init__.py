"""Universal adversarial triggers against text classifiers (`steadylm attack`): vanilla (UAT,
HotFlip along the loss gradient) and layerwise (LUAT, HotFlip along the (p,q)-singular vector of a
hidden layer's Jacobian), with transfer to other classifiers and a per-layer sensitivity profile.
See docs/attack.md.
"""
