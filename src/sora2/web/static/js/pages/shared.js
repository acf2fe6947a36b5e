// A shared video: the server rendered everything (player included) so the page works, and
// unfurls, without a script; this only starts the header and the connection banner.
import { startPage } from "../common.js";

startPage(async () => {});
