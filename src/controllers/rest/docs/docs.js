// Starts Redoc on /docs. A file of its own, not an inline script: the page's Content-Security-Policy
// allows scripts from this origin only.
const container = document.getElementById('redoc');
window.Redoc.init(
  container.dataset.specUrl,
  {
    // No fonts from a CDN: the system's sans-serif.
    theme: { typography: { fontFamily: 'system-ui, sans-serif', headings: { fontFamily: 'system-ui, sans-serif' } } },
    expandResponses: '200,201',
    pathInMiddlePanel: true,
    // The bar above Redoc stays in view: scrolled-to sections start below it.
    scrollYOffset: 'nav.docs-bar',
  },
  container,
);
