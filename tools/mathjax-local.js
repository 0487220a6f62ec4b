// MathJax 2's settings for every page of the site, loaded as its config file "local/minilora.js"
// (tools/mkdocs_hooks.py copies it into the site's MathJax). The copy of MathJax that
// jupyter-server-mathjax ships has the STIX-Web fonts only, as Jupyter's notebook used them.
MathJax.Hub.Config({
  "HTML-CSS": { availableFonts: [], preferredFont: null, webFont: "STIX-Web", imageFont: null },
  messageStyle: "none",
});
MathJax.Ajax.loadComplete("[MathJax]/config/local/minilora.js");
