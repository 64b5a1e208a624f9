"""The built-in igv.js viewer: `views.bp` (GET /viewer/<id>), `settings.ViewerConfig`
(`[viewer] enabled`). Importing the package loads neither Flask nor the assets."""
