"use strict";
// Starts Swagger UI on the OpenAPI document the page names (data-spec): the server's, or one
// model's. Everything comes from this server: the online validator badge, which would call
// out to the internet, is off (validatorUrl: null), and BaseLayout has no top bar to type
// another document's address into.
(function () {
  const root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.spec,
    domNode: root,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    validatorUrl: null,
    deepLinking: true,
  });
})();
