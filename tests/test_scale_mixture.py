"""Student-t processes and general scale mixtures: against scipy, quadrature and the GP limit."""

from __future__ import annotations

import warnings

import gpytorch
import numpy as np
import pytest
import scipy.integrate as si
import scipy.stats as st
import torch
from scipy.optimize import brentq
from sklearn.utils.estimator_checks import parametrize_with_checks

from gpkern.estimators import GPRegressor, ScaleMixtureRegressor, StudentTProcessRegressor
from gpkern.exceptions import LowESSWarning
from gpkern.models.scale_mixture import (
    Burr12,
    StudentTProcess,
    make_scale_prior,
    student_t_variance,
)


def _kernel(lengthscale=0.7, outputscale=1.3):
    k = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel())
    k.base_kernel.lengthscale = lengthscale
    k.outputscale = outputscale
    return k.double()


def _dense(k, X, Xs=None):
    with torch.no_grad():
        A = torch.as_tensor(X)
        B = A if Xs is None else torch.as_tensor(Xs)
        return k(B, A).to_dense().numpy()


@pytest.fixture
def data(rng):
    X = np.sort(rng.uniform(-3, 3, (12, 1)), axis=0)
    y = np.sin(X[:, 0]) + 0.3 * rng.standard_t(3, 12)
    Xs = np.array([[-1.2], [0.4], [4.5]])
    ys = np.array([-0.8, 0.9, 0.1])
    return X, y, Xs, ys


# -- Student-t process ---------------------------------------------------------------------------
def test_stp_marginal_likelihood_matches_scipy(data):
    X, y, _, _ = data
    k, noise, df = _kernel(), 0.2, 5.0
    tp = StudentTProcessRegressor(kernel=k, df=df, noise=noise, optimizer=None, normalize_y=False)
    tp.fit(X, y)
    C = _dense(k, X) + noise * np.eye(len(y))
    # optimizer=None keeps b = a, so the scale matrix is C itself
    ref = st.multivariate_t(np.zeros(len(y)), C, df=df).logpdf(y)
    np.testing.assert_allclose(tp.log_marginal_likelihood(), ref, rtol=1e-10)


def test_fitted_stp_state_matches_scipy(data):
    """After learning a, b, kernel and noise, the reported evidence is scipy's MVT density."""
    X, y, _, _ = data
    tp = StudentTProcessRegressor(random_state=0, max_iter=50).fit(X, y)
    a, b = tp.df_ / 2, tp.rate_
    C = _dense(tp.kernel_, (X - tp.X_mean_) / tp.X_scale_) + tp.noise_ * np.eye(len(y))
    yn = (y - y.mean()) / y.std()
    ref = st.multivariate_t(np.zeros(len(y)), b / a * C, df=tp.df_).logpdf(yn) - len(y) * np.log(y.std())
    np.testing.assert_allclose(tp.log_marginal_likelihood(), ref, rtol=1e-8)
    assert tp.predictive_df_[0] == pytest.approx(tp.df_ + len(y))


def test_fitting_improves_the_evidence(data):
    X, y, _, _ = data
    start = StudentTProcessRegressor(optimizer=None).fit(X, y).log_marginal_likelihood()
    fitted = StudentTProcessRegressor(random_state=0, max_iter=50).fit(X, y).log_marginal_likelihood()
    assert fitted > start + 1.0


def test_stp_predictive_matches_scipy_conditional(data):
    """log p(y*|y) = log MVT(y, y*) - log MVT(y), both from scipy; quantiles by quadrature."""
    X, y, Xs, ys = data
    k, noise, df = _kernel(), 0.2, 3.0
    tp = StudentTProcessRegressor(kernel=k, df=df, noise=noise, optimizer=None, normalize_y=False)
    tp.fit(X, y)
    lpd = tp.log_predictive_density(Xs, ys)
    qs = tp.predict_quantiles(Xs, [0.1, 0.5, 0.95])
    _, std = tp.predict(Xs, return_std=True)
    n = len(y)
    for j in range(len(ys)):
        Xa = np.vstack([X, Xs[j : j + 1]])
        C = _dense(k, Xa) + noise * np.eye(n + 1)

        def cond(v, C=C):
            return np.exp(
                st.multivariate_t(np.zeros(n + 1), C, df=df).logpdf(np.append(y, v))
                - st.multivariate_t(np.zeros(n), C[:n, :n], df=df).logpdf(y)
            )

        np.testing.assert_allclose(lpd[j], np.log(cond(ys[j])), rtol=1e-8)
        for p, qv in zip([0.1, 0.5, 0.95], qs[j]):
            assert si.quad(cond, -np.inf, qv)[0] == pytest.approx(p, abs=1e-6)
        # Var(y*) by quadrature; f* has the same scale mixture with Sigma* in place of Sigma* + eps
        m1 = si.quad(lambda v, c=cond: v * c(v), -np.inf, np.inf)[0]
        var_y = si.quad(lambda v, c=cond, m1=m1: (v - m1) ** 2 * c(v), -np.inf, np.inf)[0]
        Kxx = C[:n, :n]
        ks = C[n, :n]
        sig = C[n, n] - noise - ks @ np.linalg.solve(Kxx, ks)
        np.testing.assert_allclose(std[j] ** 2, var_y * sig / (sig + noise), rtol=1e-5)


def test_stp_df_to_infinity_is_the_gp(data):
    X, y, Xs, ys = data
    k = _kernel()
    gp = GPRegressor(kernel=k, noise=0.15, optimizer=None).fit(X, y)
    tp = StudentTProcessRegressor(kernel=k, df=1e9, noise=0.15, optimizer=None).fit(X, y)
    m_gp, s_gp = gp.predict(Xs, return_std=True)
    m_tp, s_tp = tp.predict(Xs, return_std=True)
    np.testing.assert_allclose(m_tp, m_gp, rtol=1e-10)
    np.testing.assert_allclose(s_tp, s_gp, rtol=1e-6)
    np.testing.assert_allclose(tp.log_predictive_density(Xs, ys), gp.log_predictive_density(Xs, ys), rtol=1e-6)
    np.testing.assert_allclose(tp.log_marginal_likelihood(), gp.log_marginal_likelihood(), rtol=1e-6)
    s_y = np.sqrt(s_gp**2 + 0.15 * y.std() ** 2)  # noise is in normalised units
    np.testing.assert_allclose(tp.predict_quantiles(Xs, 0.975), m_gp + st.norm.ppf(0.975) * s_y, rtol=1e-5)


def test_multi_output_sums_independent_columns(data):
    X, y, Xs, _ = data
    k = _kernel()
    Y = np.column_stack([y, 2 * y[::-1]])
    kw = dict(kernel=k, df=4.0, noise=0.2, optimizer=None, normalize_y=False)
    both = StudentTProcessRegressor(**kw).fit(X, Y)
    one = [StudentTProcessRegressor(**kw).fit(X, Y[:, j]) for j in range(2)]
    assert both.log_marginal_likelihood() == pytest.approx(sum(m.log_marginal_likelihood() for m in one))
    assert both.predict_quantiles(Xs, [0.2, 0.8]).shape == (3, 2, 2)
    np.testing.assert_allclose(both.predict(Xs, return_std=True)[1][:, 1], one[1].predict(Xs, return_std=True)[1])


def test_sample_y_follows_the_t_predictive(data):
    X, y, Xs, _ = data
    tp = StudentTProcessRegressor(kernel=_kernel(), df=3.0, noise=0.2, optimizer=None).fit(X, y)
    draws = tp.sample_y(Xs, n_samples=20000, random_state=1)
    assert draws.shape == (3, 20000)
    q = tp.predict_quantiles(Xs, [0.1, 0.5, 0.9], include_noise=False)
    emp = np.quantile(draws, [0.1, 0.5, 0.9], axis=1).T
    np.testing.assert_allclose(emp, q, atol=0.03 * (q[:, 2] - q[:, 0]).max())
    np.testing.assert_array_equal(draws, tp.sample_y(Xs, n_samples=20000, random_state=1))


def test_df_at_most_two(data):
    """A variance with df <= 2 is an error; the posterior predictive (df + n > 2) is finite."""
    X, y, Xs, _ = data
    with pytest.raises(ValueError, match="infinite variance"):
        student_t_variance(2.0, torch.ones(3))
    model = StudentTProcess(_kernel(), concentration=1.0, rate=1.0)
    with pytest.raises(ValueError, match="infinite variance"):
        model.prior_variance(torch.as_tensor(Xs))
    tp = StudentTProcessRegressor(kernel=_kernel(), df=1.0, noise=0.2, optimizer=None).fit(X, y)
    assert np.all(np.isfinite(tp.predict(Xs, return_std=True)[1]))
    assert tp.predictive_df_[0] == pytest.approx(1.0 + len(y))
    for bad in (0.0, -1.0, np.inf, "3"):
        with pytest.raises(ValueError, match="df must be"):
            StudentTProcessRegressor(df=bad).fit(X, y)


# -- scale priors --------------------------------------------------------------------------------
def test_burr12_matches_scipy():
    d = Burr12(2.5, 0.8, 1.7)
    x = np.array([0.05, 0.7, 2.0, 9.0])
    ref = st.burr12(2.5, 0.8, scale=1.7)
    np.testing.assert_allclose(d.log_prob(torch.as_tensor(x)).numpy(), ref.logpdf(x), rtol=1e-12)
    np.testing.assert_allclose(d.cdf(torch.as_tensor(x)).numpy(), ref.cdf(x), rtol=1e-12)
    draws = d.sample((20000,), generator=torch.Generator().manual_seed(0)).numpy()
    assert st.kstest(draws, ref.cdf).pvalue > 1e-3


@pytest.mark.parametrize(
    "name,params,ref",
    [
        ("inverse_gamma", {"concentration": 3.0, "rate": 2.0}, st.invgamma(3.0, scale=2.0)),
        ("burr12", {"c": 2.0, "k": 1.5, "scale": 0.8}, st.burr12(2.0, 1.5, scale=0.8)),
        ("lognormal", {"loc": -0.5, "scale": 0.7}, st.lognorm(0.7, scale=np.exp(-0.5))),
    ],
)
def test_named_priors_match_scipy(name, params, ref):
    x = np.array([0.1, 1.0, 3.0])
    prior = make_scale_prior(name, params)
    np.testing.assert_allclose(prior.log_prob(torch.as_tensor(x)).numpy(), ref.logpdf(x), rtol=1e-10)


def test_half_cauchy_prior_is_on_the_standard_deviation():
    prior = make_scale_prior("half_cauchy", {"scale": 0.6})
    x = np.array([0.1, 1.0, 3.0])
    # sigma ~ halfcauchy(0.6); density of v = sigma^2 is p(sqrt v) / (2 sqrt v)
    ref = st.halfcauchy(scale=0.6).logpdf(np.sqrt(x)) - np.log(2 * np.sqrt(x))
    np.testing.assert_allclose(prior.log_prob(torch.as_tensor(x)).numpy(), ref, rtol=1e-10)


def _quadrature_reference(k, noise, prior_pdf, X, y, Xs, ys, qs):
    """log p(y), log p(y*|y), E[sigma^2|y] and predictive quantiles by 1-D quadrature over sigma^2."""
    n = len(y)
    C = _dense(k, X) + noise * np.eye(n)
    Ks = _dense(k, X, Xs)
    alpha = np.linalg.solve(C, y)
    mu = Ks @ alpha
    sig = np.diag(_dense(k, Xs)) - np.einsum("ij,ji->i", Ks, np.linalg.solve(C, Ks.T)) + noise
    q = y @ alpha
    logdet = np.linalg.slogdet(C)[1]

    def loglik(v):
        return -0.5 * n * np.log(2 * np.pi * v) - 0.5 * logdet - 0.5 * q / v

    # the integrand peaks near q / n: split the range there for quad
    peak = q / n
    pts = [0, peak / 10, peak, peak * 10, np.inf]
    shift = loglik(peak)

    def integrate(f):
        return sum(si.quad(f, a, b, limit=200, epsabs=0, epsrel=1e-10)[0] for a, b in zip(pts[:-1], pts[1:]))

    def post(v):
        return prior_pdf(v) * np.exp(loglik(v) - shift)

    Z = integrate(post)
    lml = np.log(Z) + shift
    mean_s2 = integrate(lambda v: v * post(v)) / Z
    lpd = np.array([
        np.log(integrate(lambda v, j=j: post(v) * st.norm.pdf(ys[j], mu[j], np.sqrt(v * sig[j]))) / Z)
        for j in range(len(ys))
    ])

    def cdf(t, j):
        return integrate(lambda v: post(v) * st.norm.cdf(t, mu[j], np.sqrt(v * sig[j]))) / Z

    quants = np.array(
        [[brentq(lambda t, j=j, p=p: cdf(t, j) - p, mu[j] - 20, mu[j] + 20, xtol=1e-5) for p in qs] for j in range(len(ys))]
    )
    return lml, lpd, mean_s2, quants


@pytest.mark.parametrize(
    "prior,params,pdf,proposal",
    [
        ("burr12", {"c": 2.0, "k": 1.0, "scale": 1.0}, st.burr12(2.0, 1.0).pdf, "adaptive"),
        pytest.param(
            "burr12", {"c": 2.0, "k": 1.0, "scale": 1.0}, st.burr12(2.0, 1.0).pdf, "prior",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            "lognormal", {"loc": 0.0, "scale": 1.0}, st.lognorm(1.0).pdf, "adaptive",
            marks=pytest.mark.slow,
        ),
        (
            "half_cauchy",
            {"scale": 1.0},
            lambda v: st.halfcauchy.pdf(np.sqrt(v)) / (2 * np.sqrt(v)),
            "adaptive",
        ),
    ],
)
def test_importance_sampling_matches_quadrature(data, prior, params, pdf, proposal):
    X, y, Xs, ys = data
    k, noise = _kernel(), 0.2
    sm = ScaleMixtureRegressor(
        kernel=k, prior=prior, prior_params=params, n_samples=40000, proposal=proposal,
        noise=noise, optimizer=None, normalize_y=False, random_state=0,
    ).fit(X, y)
    lml, lpd, mean_s2, quants = _quadrature_reference(k, noise, pdf, X, y, Xs, ys, [0.05, 0.9])
    assert sm.ess_[0] > 2000
    assert sm.log_marginal_likelihood() == pytest.approx(lml, abs=0.01)
    np.testing.assert_allclose(sm.log_predictive_density(Xs, ys), lpd, atol=0.01)
    np.testing.assert_allclose((sm.scale_weights_ * sm.scale_samples_).sum(), mean_s2, rtol=0.02)
    np.testing.assert_allclose(sm.predict_quantiles(Xs, [0.05, 0.9]), quants, atol=0.01)


def test_torch_distribution_prior_equals_named(data):
    X, y, Xs, ys = data
    kw = dict(kernel=_kernel(), noise=0.2, optimizer=None, random_state=3, n_samples=500)
    named = ScaleMixtureRegressor(prior="lognormal", prior_params={"loc": 0.1, "scale": 0.5}, **kw).fit(X, y)
    dist = torch.distributions.LogNormal(torch.tensor(0.1, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64))
    custom = ScaleMixtureRegressor(prior=dist, **kw).fit(X, y)
    np.testing.assert_allclose(custom.log_predictive_density(Xs, ys), named.log_predictive_density(Xs, ys))


def test_inverse_gamma_mixture_converges_to_the_stp(data):
    X, y, Xs, ys = data
    kw = dict(kernel=_kernel(), noise=0.2, optimizer=None, normalize_y=False)
    tp = StudentTProcessRegressor(df=6.0, **kw).fit(X, y)
    sm = ScaleMixtureRegressor(
        prior="inverse_gamma", prior_params={"concentration": 3.0, "rate": 3.0}, n_samples=40000,
        random_state=0, **kw,
    ).fit(X, y)
    np.testing.assert_allclose(sm.log_predictive_density(Xs, ys), tp.log_predictive_density(Xs, ys), atol=0.01)
    np.testing.assert_allclose(sm.predict(Xs, return_std=True)[1], tp.predict(Xs, return_std=True)[1], rtol=0.02)


def test_fit_learns_kernel_and_noise(data):
    X, y, _, _ = data
    sm = ScaleMixtureRegressor(n_samples=300, random_state=0, max_iter=40).fit(X, y)
    start = ScaleMixtureRegressor(n_samples=300, random_state=0, optimizer=None).fit(X, y)
    assert sm.log_marginal_likelihood() > start.log_marginal_likelihood() + 1.0
    assert sm.noise_ != pytest.approx(0.1)


def test_low_ess_warns(data):
    X, y, _, _ = data
    far = {"loc": 8.0, "scale": 3.0}  # prior mass far above the data's scale
    with pytest.warns(LowESSWarning, match="Effective sample size"):
        sm = ScaleMixtureRegressor(
            prior="lognormal", prior_params=far, proposal="prior", n_samples=500, optimizer=None,
            random_state=0,
        ).fit(X, y)
    assert sm.ess_[0] < 25
    with warnings.catch_warnings():  # the adaptive proposal fixes it
        warnings.simplefilter("error", LowESSWarning)
        sm = ScaleMixtureRegressor(
            prior="lognormal", prior_params=far, n_samples=500, optimizer=None, random_state=0
        ).fit(X, y)
    assert sm.ess_[0] > 100


def test_all_weights_underflow_is_an_error(data):
    X, y, _, _ = data
    tiny = torch.distributions.Uniform(
        torch.tensor(1e-320, dtype=torch.float64), torch.tensor(2e-320, dtype=torch.float64)
    )
    good = ScaleMixtureRegressor(n_samples=100, optimizer=None, random_state=0).fit(X, y)
    before = good.scale_samples_.copy()
    for proposal in ("prior", "adaptive"):
        with pytest.raises(FloatingPointError, match="underflowed"):
            good.set_params(prior=tiny, proposal=proposal).fit(X, y)
    np.testing.assert_array_equal(good.scale_samples_, before)  # a failed fit changes nothing


@pytest.mark.parametrize(
    "prior,params",
    [
        ("burr12", {"c": 0.0}),
        ("burr12", {"k": -1.0}),
        ("inverse_gamma", {"concentration": 2.0, "rate": 0.0}),
        ("half_cauchy", {"scale": -2.0}),
        ("lognormal", {"scale": 0.0}),
        ("lognormal", {"loc": float("nan")}),
        ("burr12", {"shape": 1.0}),
        ("cauchy", None),
    ],
)
def test_bad_prior_parameters(data, prior, params):
    X, y, _, _ = data
    with pytest.raises(ValueError, match="prior|Parameter|parameter"):
        ScaleMixtureRegressor(prior=prior, prior_params=params).fit(X, y)


def test_bad_regressor_parameters(data):
    X, y, Xs, _ = data
    with pytest.raises(ValueError, match="n_samples"):
        ScaleMixtureRegressor(n_samples=1).fit(X, y)
    with pytest.raises(ValueError, match="proposal"):
        ScaleMixtureRegressor(proposal="laplace").fit(X, y)
    with pytest.raises(ValueError, match="prior_params must be None"):
        ScaleMixtureRegressor(prior=torch.distributions.Exponential(1.0), prior_params={"rate": 1.0}).fit(X, y)
    tp = StudentTProcessRegressor(optimizer=None).fit(X, y)
    for q in (0.0, 1.0, [0.5, 1.2], [[0.5]]):
        with pytest.raises(ValueError, match="q must be"):
            tp.predict_quantiles(Xs, q)


# -- scikit-learn conformance --------------------------------------------------------------------
@parametrize_with_checks(
    [
        StudentTProcessRegressor(max_iter=20),
        ScaleMixtureRegressor(n_samples=200, max_iter=20),
    ]
)
def test_sklearn_compatible(estimator, check):
    check(estimator)
