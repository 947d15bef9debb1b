"""
Student-t process versus GP on data with outliers
=================================================

A GP, Student-t processes (:class:`gpkern.estimators.StudentTProcessRegressor`) with learned
and with fixed degrees of freedom, and a Burr-XII scale mixture
(:class:`gpkern.estimators.ScaleMixtureRegressor`) fitted to 25 noisy observations of a sine,
three of them gross outliers. The scale mixtures' predictives are not Gaussian: the bands are
their 5% and 95% predictive quantiles (``predict_quantiles``, noise included); each title
gives the held-out log predictive density on clean test points.

What the plot shows, honestly: one scale :math:`\\sigma^2` is shared by every point, so a
scale mixture cannot explain *isolated* outliers better than a GP. Maximum likelihood then
sends the degrees of freedom to infinity and the Student-t process becomes the GP (second
panel). Fixing a small ``df`` keeps the predictive's tails heavy (it is a Student-t with
:math:`\\nu + n` degrees of freedom), which widens the outer quantiles. Independent
heavy-tailed *noise* is a different model (a Student-t likelihood).
"""

import matplotlib.pyplot as plt
import numpy as np

from gpkern.estimators import GPRegressor, ScaleMixtureRegressor, StudentTProcessRegressor

rng = np.random.default_rng(3)
X = np.sort(rng.uniform(0, 6, 25))[:, None]
y = np.sin(X[:, 0]) + 0.15 * rng.standard_normal(25)
y[[4, 12, 20]] += [2.5, -2.0, 3.0]
X_test = rng.uniform(0, 6, (300, 1))
y_test = np.sin(X_test[:, 0]) + 0.15 * rng.standard_normal(300)
grid = np.linspace(-0.5, 6.5, 200)[:, None]

models = {
    "GP": GPRegressor(random_state=0),
    "Student-t process": StudentTProcessRegressor(random_state=0),
    "Student-t process, df = 3": StudentTProcessRegressor(df=3.0, random_state=0),
    "Burr-XII mixture": ScaleMixtureRegressor(prior="burr12", n_samples=500, random_state=0),
}
fig, axes = plt.subplots(1, 4, figsize=(16, 4), sharey=True)
for ax, (name, model) in zip(axes, models.items()):
    model.fit(X, y)
    lpd = model.log_predictive_density(X_test, y_test).mean()
    mean = model.predict(grid)
    if name == "GP":
        _, std = model.predict(grid, return_std=True)
        std_y = np.sqrt(std**2 + model.noise_ * y.std() ** 2)
        lo, hi = mean - 1.645 * std_y, mean + 1.645 * std_y
    else:
        lo, hi = model.predict_quantiles(grid, [0.05, 0.95]).T
    ax.fill_between(grid[:, 0], lo, hi, alpha=0.25, label="90% predictive interval")
    ax.plot(grid[:, 0], mean, lw=2, label="mean")
    ax.plot(grid[:, 0], np.sin(grid[:, 0]), "k:", label="truth")
    ax.scatter(X[:, 0], y, s=14, c="k", zorder=3)
    title = f"{name}\nheld-out LPD {lpd:.2f}"
    if name == "Student-t process":
        title += f", learned df {model.df_:.3g}"
    ax.set_title(title)
    ax.set_xlabel("x")
axes[0].set_ylabel("y")
axes[0].legend(loc="upper right", fontsize=8)
fig.tight_layout()
fig.savefig("student_t_process.png", dpi=110)
print("student_t_process.png")
