// Pages with nothing of their own (the 404 page): the header and the banner only.
import { startPage } from "../common.js";

startPage(async () => {});
