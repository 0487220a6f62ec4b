// MathJax 2 on the site's Markdown pages, whose equations pymdownx.arithmatex wraps in \( \) and
// \[ \]. A notebook page loads MathJax itself first (mkdocs.yml, custom_mathjax_url), with nbconvert's
// settings: then this changes nothing. tools/mkdocs_hooks.py copies this file into assets/.
if (!window.MathJax) {
  window.MathJax = {
    config: ["TeX-AMS-MML_HTMLorMML-full.js", "local/minilora.js"],
    tex2jax: { inlineMath: [["\\(", "\\)"]], displayMath: [["\\[", "\\]"]], processEscapes: true },
  };
}
